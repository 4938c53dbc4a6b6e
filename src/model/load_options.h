// How LlamaModel::load treats the Linear weights of the decoder layers: dense (default), or quantized while
// loading as transformers' BitsAndBytesConfig would (load_in_4bit: NF4/FP4 blocks, optional double quant;
// load_in_8bit: LLM.int8). A folder saved by transformers + bitsandbytes (or `qtune quantize`) carries its
// quantization_config in config.json and loads quantized without any options.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/device_map.h"
#include "quant/codebook.h"

namespace qtune {

struct LoadOptions {
  bool load_in_4bit = false;
  QuantType quant_type = QuantType::NF4;  // bnb_4bit_quant_type
  bool double_quant = false;              // bnb_4bit_use_double_quant
  int64_t blocksize = 64;                 // bitsandbytes' Linear4bit default
  DType compute_dtype = DType::F32;       // bnb_4bit_compute_dtype (F32, BF16, F16)
  bool load_in_8bit = false;
  float llm_int8_threshold = 6.0f;
  // llm_int8_skip_modules: the keys of the Linear modules kept dense. Unset (null in config.json) means
  // transformers' default, the output embeddings (lm_head); a list given replaces that default, so a list
  // without lm_head quantizes it.
  std::optional<std::vector<std::string>> skip_modules;
  // CPU offload (device_map.h): which modules load and run on the GPU and which on the CPU. When set,
  // LlamaModel::load's device argument is not used. A run-time choice: never read from or written to files.
  DeviceMapSpec device_map;

  bool quantized() const { return load_in_4bit || load_in_8bit; }
  std::vector<std::string> skip_keys() const {
    return skip_modules ? *skip_modules : std::vector<std::string>{"lm_head"};
  }
};

}  // namespace qtune
