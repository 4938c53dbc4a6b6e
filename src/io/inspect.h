// `qtune inspect PATH`: what a checkpoint holds (tensors, dtypes, parameter count) and how much memory
// its weights need as stored, in bf16 and in NF4, plus the config.json summary when one is beside it.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "io/hf_config.h"
#include "io/safetensors.h"

namespace qtune {

struct WeightSummary {
  int64_t num_tensors = 0;
  int64_t num_params = 0;
  int64_t num_quantizable_params = 0;              // in 2-D Linear weights (not embeddings, not lm_head)
  std::map<std::string, uint64_t> bytes_by_dtype;  // dtype name → bytes as stored
  uint64_t bytes_stored = 0;
  uint64_t bytes_bf16 = 0;    // every parameter in bf16
  uint64_t bytes_nf4 = 0;     // Linear weights NF4 (0.5 B/param + f32 absmax per 64), the rest bf16
  uint64_t bytes_nf4_dq = 0;  // same with double quant (u8 absmax per 64 + f32 scale per 256 blocks)
};

// Sums over every tensor of the store (maps every shard).
WeightSummary summarize_weights(const WeightStore& ws);

// The human-readable report for a model folder, a .safetensors file or an index .json. Tensors are
// listed sorted by name. A config.json beside the weights is summarised; if it is malformed, its error
// message appears in the report instead (the weights are still described). Throws for unreadable weights.
std::string inspect_report(const std::string& path);

// One-paragraph description of a config ("LlamaForCausalLM: 5 layers, hidden 64, ...").
std::string describe_model_config(const ModelConfig& c);

// "1.23 GiB" / "512 B".
std::string format_bytes(uint64_t n);

}  // namespace qtune
