// Code books of the bitsandbytes quantization formats: the 16 NF4 and FP4 values (index = the 4-bit code)
// and the 256-value dynamic map used by 8-bit blockwise quantization (double quant, 8-bit optimizers).
// Values are bit-identical to bitsandbytes' get_4bit_type() and create_dynamic_map(), which is what makes
// files cross over in both directions.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qtune {

enum class QuantType { NF4, FP4 };

// Which bitsandbytes backend's quantization rules to reproduce: its CPU (torch) path or its CUDA kernels
// give different bytes in places (bnb_cuda_rules.h); transformers writes whichever ran.
enum class BnbBackend { Cpu, Cuda };

const char* quant_type_name(QuantType t);  // "nf4" / "fp4" (the names used in files)
// Parses "nf4" / "fp4"; throws ErrorKind::Format naming `context` otherwise.
QuantType quant_type_from_name(const std::string& name, const std::string& context = "");

// The 16 code values in code order (index = the nibble stored in the file), already divided by their
// absolute maximum (so in [-1, 1]). NF4 is sorted; FP4 is in bit-pattern order (sign bit = 0b1000).
const float* code4(QuantType t);

// bitsandbytes create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): 256 sorted values in
// [-1, 1] (signed) or [0, 1] (unsigned), computed with the same f32 arithmetic as torch.
std::vector<float> create_dynamic_map(bool signed_map = true);

// Block sizes bitsandbytes accepts for 4-bit quantization: a power of two in [32, 4096]. Throws
// ErrorKind::Usage naming `context` otherwise (the same rule is used for 8-bit blockwise quantization).
void check_blocksize(int64_t blocksize, const std::string& context);

}  // namespace qtune
