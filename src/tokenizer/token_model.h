// The model stage of a tokenizer: turns one pre-tokenized word into ids. BpeModel implements HF's BPE; the
// tokenizer.model loader builds a BpeModel from a SentencePiece vocabulary.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qtune {

class TokenModel {
 public:
  virtual ~TokenModel() = default;
  // Appends the ids of `word` (non-empty) to out.
  virtual void tokenize(const std::string& word, std::vector<int32_t>& out) const = 0;
  virtual int vocab_size() const = 0;  // one past the largest id
  // nullptr when the id has no token.
  virtual const std::string* id_to_token(int id) const = 0;
  virtual int token_to_id(const std::string& tok) const = 0;  // -1 when absent
};

}  // namespace qtune
