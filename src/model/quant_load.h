// Quantized checkpoints at load time: reading and writing config.json's quantization_config exactly as
// transformers' BitsAndBytesConfig does, and putting one Linear weight of a store into the right storage
// (dense, bitsandbytes 4-bit or 8-bit entries already in the file, or quantized from a 16/32-bit tensor
// now, one tensor at a time so host memory stays near one tensor beyond the mapped files).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/linear.h"
#include "model/load_options.h"

namespace qtune {

// dir/config.json's quantization_config as LoadOptions; *present says whether there is one. Throws
// ErrorKind::Config naming config.json for a quant_method other than "bitsandbytes", both or neither of
// load_in_4bit / load_in_8bit, an unknown quant type or compute dtype.
LoadOptions read_quantization_config(const std::string& dir, bool* present);
// The options a model folder loads with: the folder's quantization_config when it has one (requested
// options must then be off or agree), otherwise `requested`.
LoadOptions resolve_load_options(const std::string& dir, const LoadOptions& requested, bool* prequantized);
// transformers' BitsAndBytesConfig.to_dict() for opts (the keys and values save_pretrained writes).
nlohmann::json quantization_config_json(const LoadOptions& opts);
// True when the Linear `name` (e.g. "lm_head", "model.layers.0.mlp.up_proj") stays dense: as transformers
// decides, a skip key matches when the name ends with it, or when it matches as a regex from the start of the
// name up to a module boundary ("model.layers.0" or "model.layers.*.mlp"). Throws ErrorKind::Format naming a
// key that is not a valid regex.
bool skip_quantization(const LoadOptions& opts, const std::string& name);

// "bfloat16" / "float16" / "float32" <-> DType (torch names, as config files spell them).
DType torch_dtype_from_name(const std::string& name, const std::string& context);
const char* torch_dtype_name(DType dt);

// Checks the stored entries of the Linear `name` (its weight is name + ".weight") against the expected
// dense shape [O, I]: a float weight of that shape, or a complete and consistent bitsandbytes 4-bit / 8-bit
// entry set. Returns "" when fine, otherwise the problem (naming the file and the tensor).
std::string check_linear_entries(const WeightStore& store, const std::string& name, const Shape& shape,
                                 const LoadOptions& opts);
// Puts the Linear's weight into quantized storage (lin.q4 / lin.q8) when the file holds bitsandbytes entries
// for it, or when opts quantize it and it is not skipped; appends the store entries it used to *used.
// Returns false (touching nothing) when the weight stays dense, for the caller's dense path. Call after
// check_linear_entries. On CUDA the storage ends up on the GPU (a float weight is quantized there).
bool load_quantized_linear(Linear& lin, const WeightStore& store, const LoadOptions& opts, Device device,
                           std::vector<std::string>* used);

}  // namespace qtune
