// The bitsandbytes / transformers serialization of a 4-bit weight, to and from a name -> Tensor map (what a
// safetensors file holds). For a weight named P (e.g. "model.layers.0.mlp.down_proj.weight"):
//   P                                   U8 [(numel + 1) / 2, 1]   packed codes
//                                       (or those bytes as the bnb_4bit_quant_storage dtype, e.g. BF16)
//   P.absmax                            F32 [num_blocks] (U8 when nested)
//   P.quant_map                         F32 [16]                  the NF4 / FP4 code values
//   P.nested_absmax                     F32 [ceil(num_blocks / 256)]   (nested only)
//   P.nested_quant_map                  F32 [256]                 the dynamic map (nested only)
//   P.quant_state.bitsandbytes__nf4     U8 [len]  UTF-8 JSON: {"quant_type", "blocksize", "dtype", "shape",
//     (or __fp4)                          and when nested "nested_blocksize", "nested_dtype",
//     "nested_offset"}
// The JSON is written exactly as Python's json.dumps writes it (", " / ": " separators, Python float repr),
// so a round trip reproduces bitsandbytes' bytes.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "quant/quant4.h"

namespace qtune {

using TensorMap = std::map<std::string, Tensor>;

// The entries for q under `prefix`, in bitsandbytes' order (packed weight first).
std::vector<std::pair<std::string, Tensor>> bnb_4bit_entries(const Quant4Tensor& q,
                                                             const std::string& prefix);
// Adds those entries to *out (replacing same-named ones).
void bnb_write_4bit(const Quant4Tensor& q, const std::string& prefix, TensorMap* out);
// True when `prefix` has a quant_state.bitsandbytes__nf4|fp4 entry (a 4-bit weight).
bool bnb_has_4bit(const TensorMap& tensors, const std::string& prefix);
// Reads and validates a 4-bit weight; throws ErrorKind::Format naming the entry on a missing entry, a wrong
// size or dtype, an unknown quant type, a bad block size or malformed JSON. Tensors are shared, not copied.
Quant4Tensor bnb_read_4bit(const TensorMap& tensors, const std::string& prefix);

// The quant_state JSON text for q, byte-identical to bitsandbytes' pack_dict_to_tensor.
std::string bnb_quant_state_json(const Quant4Tensor& q);
// Python's repr() of a float (shortest round-trip digits; exponent form below 1e-4 and from 1e16).
std::string python_float_repr(double v);

}  // namespace qtune
