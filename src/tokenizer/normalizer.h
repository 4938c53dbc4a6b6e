// Normalizers of tokenizer.json ("normalizer": {...}): the text rewrites HF applies to each piece of input
// between added tokens, before pre-tokenization. Supported: Sequence, Prepend, Replace (String or Regex
// pattern), NFC, Strip and Precompiled (SentencePiece charsmaps); others are rejected with
// ErrorKind::Unsupported.
#pragma once
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace qtune {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};

// `source` names the file for error messages. Returns nullptr for a JSON null.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& source);

// Pieces the tokenizer.model loader builds directly.
std::unique_ptr<Normalizer> make_prepend_normalizer(const std::string& prefix);
std::unique_ptr<Normalizer> make_replace_normalizer(const std::string& from, const std::string& to);
// sentencepiece's remove_extra_whitespaces: drops leading and trailing spaces, collapses runs to one.
std::unique_ptr<Normalizer> make_collapse_spaces_normalizer();
std::unique_ptr<Normalizer> make_sequence_normalizer(std::unique_ptr<Normalizer> a,
                                                     std::unique_ptr<Normalizer> b);

// Replaces every occurrence of `from` (non-empty) in s.
std::string replace_all(const std::string& s, const std::string& from, const std::string& to);

}  // namespace qtune
