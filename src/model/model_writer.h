// Writing a Hugging Face model folder from tensors in memory (what save_pretrained writes): the weights in
// one dtype as model.safetensors or shards with model.safetensors.index.json, config.json copied from the
// source folder with its dtype set and quantization_config dropped (tie_word_embeddings false when asked),
// and the tokenizer files and generation_config.json copied. Used by `qtune merge` and by full fine-tuning.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "model/llama_model.h"

namespace qtune {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// The dense model's tensors under their HF names in transformers' state_dict order (lm_head last, left
// out unless with_lm_head). Linear weights must be dense (throws ErrorKind::Unsupported naming a
// quantized one).
NamedTensors model_state_dict(const LlamaModel& m, bool with_lm_head);

struct ModelFolderWritten {
  int shards = 0;
  int64_t tensors = 0, bytes_out = 0;
};

// tensors (any device and dtype; converted one shard at a time) into out_dir, side files from src_dir.
// Errors: ErrorKind::Config for src_dir's config.json, ErrorKind::Io for write failures.
ModelFolderWritten write_model_folder(const NamedTensors& tensors, const std::string& src_dir,
                                      const std::string& out_dir, DType dtype, int64_t max_shard_bytes,
                                      bool untie_embeddings);

}  // namespace qtune
