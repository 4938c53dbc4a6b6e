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

// Replaces every occurrence of `from` (non-empty) in s.
std::string replace_all(const std::string& s, const std::string& from, const std::string& to);

}  // namespace qtune
