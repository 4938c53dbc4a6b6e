// Writing a Hugging Face model folder the way transformers' save_pretrained lays it out: the weights in
// one model.safetensors, or in shards model-0000i-of-0000n.safetensors with model.safetensors.index.json
// ({"metadata": {"total_size"}, "weight_map"}), split by max_shard_size as huggingface_hub's
// split_torch_state_dict_into_shards does; and the tokenizer / generation files copied from the source
// folder. `qtune quantize` and `qtune merge` write their output folders through these.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace qtune {

// transformers' default max_shard_size ("5GB").
constexpr int64_t kDefaultMaxShardBytes = 5000000000LL;

// Parses a size as transformers' max_shard_size takes it: "5GB", "500MB", "10KB" (powers of 1000),
// "2GiB", "100MiB", "64KiB" (powers of 1024), or a plain byte count. Throws ErrorKind::Usage.
int64_t parse_shard_size(const std::string& s);

// Splits groups of tensors (in order; each group's tensors stay in one shard) into shards of at most
// max_bytes: a group that would push the open shard past max_bytes closes it; a group larger than
// max_bytes gets a shard of its own (put before the open shard, as huggingface_hub does). Returns the
// group indices of each shard, in file order.
std::vector<std::vector<size_t>> plan_shards(const std::vector<int64_t>& group_bytes, int64_t max_bytes);

// Writes the weight files of a folder with n_shards shards (n_shards >= 1). make_shard(i) gives shard
// i's tensors in order; it is called once per shard, just before that file is written, so callers can
// build each shard's tensors lazily and keep one shard in memory at a time. Weight files left by an
// earlier write (model.safetensors, its index, model-*-of-*.safetensors) are removed first. Returns the
// total tensor bytes written.
using ShardTensors = std::vector<std::pair<std::string, Tensor>>;
int64_t write_weight_shards(const std::string& dir, int n_shards,
                            const std::function<ShardTensors(int)>& make_shard);

// Copies the tokenizer and generation files that exist in `from` (tokenizer.json, tokenizer_config.json,
// tokenizer.model, special_tokens_map.json, added_tokens.json, vocab.json, merges.txt,
// chat_template.jinja, generation_config.json) into `to`, overwriting. Throws ErrorKind::Io.
void copy_model_side_files(const std::string& from, const std::string& to);

// Writes text to path (ErrorKind::Io naming the path on failure).
void write_text_file(const std::string& path, const std::string& text);

}  // namespace qtune
