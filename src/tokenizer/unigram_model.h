// HF's Unigram model (tokenizers/src/models/unigram), as tokenizer.json files converted from SentencePiece
// Unigram models use it: Viterbi over the pieces of the vocabulary (the segmentation with the highest sum of
// piece scores), a character no piece covers costing min_score - 10 as the unknown piece, consecutive
// unknowns fused into one, and byte fallback (<0xXX> pieces) for unknown segments when the model has it.
#pragma once
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/token_model.h"

namespace qtune {

// The sentencepiece library's variant (for tokenizer.model with sentencepiece semantics): piece types decide
// what the lattice holds (normal and user-defined pieces; user-defined ones score length * max_score - 0.1),
// min_score is taken over normal pieces and scores add up in float.
struct SpmUnigramRules {
  std::vector<int> piece_types;  // sentencepiece's SentencePiece.Type per id (1 normal ... 6 byte)
};

class UnigramModel : public TokenModel {
 public:
  // pieces: (piece, score) in id order. unk_id < 0: none. Throws ErrorKind::Format naming `source`.
  UnigramModel(std::vector<std::pair<std::string, double>> pieces, int unk_id, bool byte_fallback,
               const std::string& source, const SpmUnigramRules* spm = nullptr);
  // From tokenizer.json's "model" object (type Unigram): {"vocab": [[piece, score], ...], "unk_id",
  // "byte_fallback"}.
  static std::unique_ptr<UnigramModel> from_json(const nlohmann::json& model, const std::string& source);

  void tokenize(const std::string& word, std::vector<int32_t>& out) const override;
  int vocab_size() const override { return (int)pieces_.size(); }
  const std::string* id_to_token(int id) const override;
  int token_to_id(const std::string& tok) const override;

 private:
  struct Node {
    std::unordered_map<unsigned char, int> next;
    int id = -1;
  };
  std::vector<std::pair<std::string, double>> pieces_;
  std::unordered_map<std::string, int32_t> ids_;
  std::vector<Node> trie_;
  int unk_id_ = -1;
  bool byte_fallback_ = false;
  double unk_score_ = 0;
  bool spm_ = false;        // sentencepiece library rules
  double max_score_ = 0;    // (spm) over normal pieces
  std::vector<int> types_;  // (spm)
};

}  // namespace qtune
