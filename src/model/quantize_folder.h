// `qtune quantize`: writes a model folder in the layout transformers + bitsandbytes save_pretrained
// produces for a quantized model, so the folder loads in transformers (from_pretrained, no options) and in
// qtune (LlamaModel::load, no options). Every Linear weight (the decoder's q/k/v/o and gate/up/down
// projections, and an untied lm_head) that opts.skip_keys() does not skip becomes the bitsandbytes entries
// (4-bit: packed weight + absmax, quant_map, nested_*, quant_state JSON; 8-bit: I8 weight + SCB +
// weight_format); every other tensor is copied as is; config.json gains quantization_config
// (BitsAndBytesConfig.to_dict()); tokenizer and generation files are copied. Weights are read from the mapped
// input one tensor at a time; output shards follow transformers' 5 GB default (model.safetensors, or
// model-0000i-of-0000n.safetensors + model.safetensors.index.json). device picks whose bytes: bitsandbytes
// gives different bytes on the CPU and on a GPU (quant/bnb_cuda_rules.h), so Device::CPU writes what
// transformers + bitsandbytes write on the CPU and Device::CUDA quantizes on the GPU and writes what they
// write there (transformers' usual path).
#pragma once
#include <cstdint>
#include <string>

#include "model/load_options.h"

namespace qtune {

struct QuantizeReport {
  int64_t quantized_tensors = 0, copied_tensors = 0;
  int64_t bytes_in = 0, bytes_out = 0;
  int shards = 0;
};

// in: a dense model folder; out: created (or reused when empty of weights). Throws ErrorKind::Usage for a
// folder that is already quantized or options that quantize nothing, ErrorKind::Io for write failures.
// ErrorKind::Unsupported for Device::CUDA without a usable GPU.
QuantizeReport quantize_model_folder(const std::string& in, const std::string& out, const LoadOptions& opts,
                                     Device device = Device::CPU, int64_t max_shard_bytes = 5000000000LL);

}  // namespace qtune
