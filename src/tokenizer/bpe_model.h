// HF's BPE model (tokenizers/src/models/bpe): a word is split into characters (each looked up in the
// vocabulary, else byte-fallback <0xXX> tokens, else the unknown token, else dropped), then adjacent pairs
// are merged lowest merge rank first (leftmost among equal ranks) until no merge applies. Options as in
// tokenizer.json: unk_token, fuse_unk, byte_fallback, ignore_merges (a word found whole in the vocabulary is
// taken as is), continuing_subword_prefix, end_of_word_suffix. Results are cached per word (bounded), so long
// texts that repeat words cost one merge pass per distinct word.
#pragma once
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/token_model.h"

namespace qtune {

struct BpeOptions {
  bool has_unk = false;
  std::string unk_token;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;
};

class BpeModel : public TokenModel {
 public:
  // vocab: token -> id. merges in rank order. Throws ErrorKind::Format naming `source` when a merge names a
  // token missing from the vocabulary (or their concatenation is missing), or unk_token is not in it.
  BpeModel(std::unordered_map<std::string, int32_t> vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions opts,
           const std::string& source);

  // From tokenizer.json's "model" object (type BPE). Merges may be "a b" strings or ["a", "b"] pairs.
  static std::unique_ptr<BpeModel> from_json(const nlohmann::json& model, const std::string& source);

  // Replaces unk_token, fuse_unk, byte_fallback and ignore_merges (transformers' tokenizer classes rebuild
  // the model from the vocab and merges with their own settings); the subword prefix and suffix stay as
  // built. Throws ErrorKind::Format naming `source` when the unknown token is not in the vocab.
  void set_options(const BpeOptions& o, const std::string& source);

  void tokenize(const std::string& word, std::vector<int32_t>& out) const override;
  int vocab_size() const override { return (int)id_to_token_.size(); }
  const std::string* id_to_token(int id) const override;
  int token_to_id(const std::string& tok) const override;

 private:
  void merge_word(const std::string& word, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left id, right id) -> (rank, new id)
  BpeOptions opts_;
  int32_t unk_id_ = -1;
  int32_t byte_ids_[256];  // <0xXX> ids, -1 when absent

  static constexpr size_t kCacheCapacity = 10000;  // words, as HF's default cache
  static constexpr size_t kCacheMaxWordBytes = 256;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace qtune
