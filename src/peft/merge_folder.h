// `qtune merge`: a base model folder + a PEFT LoRA/DoRA adapter folder -> a merged Hugging Face model folder,
// what PeftModel.merge_and_unload() followed by save_pretrained writes:
//   - every LoRA layer folded into its base weight, W + scale·B·A (DoRA: rows rescaled to the magnitude
//     vector), by LoraModel::merge; trained biases and modules_to_save tensors replace the base's;
//   - the weights in one dtype (bf16, f16 or f32), model.safetensors or 5 GB shards with an index;
//   - config.json copied with "dtype"/"torch_dtype" set to that dtype, without quantization_config, and
//     with tie_word_embeddings false when the adapter changed lm_head or the embedding of a tied model
//     (PEFT unties them the same way); tokenizer files and generation_config.json copied.
// A bitsandbytes-quantized base (4-bit NF4/FP4 or LLM.int8 folder) is dequantized first, as PEFT's
// Linear4bit/Linear8bitLt.merge does (W = dequant(Wq) + scale·B·A); PEFT then re-quantizes into the 4/8-bit
// layer, while this writes the merged weights dense (the output is a 16-bit model). Merging onto the
// dense base the adapter was trained from (QLoRA's base_model_name_or_path) is usually the better choice:
// the report says when a quantized base was dequantized.
// Host memory: the base as f32 (zero-copy when the files are f32) plus one output shard.
#pragma once
#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "io/model_folder.h"

namespace qtune {

struct MergeOptions {
  bool dtype_given = false;  // false: the base's dtype when it is bfloat16/float16, else bfloat16
  DType dtype = DType::BF16;
  int64_t max_shard_bytes = kDefaultMaxShardBytes;
};

struct MergeReport {
  int64_t merged_layers = 0;        // LoRA / DoRA layers folded into base weights
  int64_t replaced_tensors = 0;     // trained biases and modules_to_save weights
  int64_t dequantized_linears = 0;  // quantized base Linears dequantized (0 for a dense base)
  bool untied = false;              // lm_head written separately from a tied embedding
  DType dtype = DType::BF16;
  int64_t tensors = 0, bytes_out = 0;
  int shards = 0;
};

// Throws: ErrorKind::Usage when out is the base or adapter folder; the errors of LlamaModel::load (base)
// and LoraModel::load (adapter: missing folder or files, an adapter for another base -> the tensor, its
// shape and the expected shape, naming adapter_model.safetensors); ErrorKind::Io for write failures.
MergeReport merge_adapter_folder(const std::string& base_dir, const std::string& adapter_dir,
                                 const std::string& out_dir, const MergeOptions& opts = {});

}  // namespace qtune
