// 4-bit blockwise quantization (NF4 / FP4), bit-exact with bitsandbytes on the CPU.
//
// Per block of `blocksize` consecutive values (flattened, row-major): absmax = max|x| (f32); scaled value
// v = clamp(x * (1/absmax), -1, 1) (a partial last block divides by max(absmax, 1e-38) instead, and stores
// that clamped absmax); code = the code value nearest to v, where a v exactly on the midpoint of two
// neighbouring code values takes the LOWER one (torch.bucketize on the f32 midpoints). Two codes per byte,
// element 2i in the HIGH nibble; an odd count pads the last low nibble with the code of 0. An all-zero
// full block stores absmax 0 and codes of 0. Dequantization is f32(code[q] * absmax), rounded to the
// output dtype (nearest even).
//
// bitsandbytes' CUDA kernels give other bytes in places (the sign of zero in FP4, thresholds off by an ulp,
// the partial and all-zero blocks, the 8-bit search of double quant): BnbBackend::Cuda reproduces those
// (bnb_cuda_rules.h). Dequantized values agree except for the sign of zero and ulp-near-threshold codes.
//
// Double quantization (bitsandbytes compress_statistics=True) stores the absmax as 8-bit: offset =
// mean(absmax) (torch's f32 mean), absmax - offset quantized with the signed dynamic map in blocks of 256
// (see double_quant.h).
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "quant/codebook.h"

namespace qtune {

// A 4-bit quantized tensor with everything transformers/bitsandbytes serialize for it (bnb_format.h).
struct Quant4Tensor {
  Tensor packed;  // U8 [(numel + 1) / 2, 1], high nibble first (bitsandbytes' layout)
  Tensor absmax;  // F32 [num_blocks]; U8 [num_blocks] when nested
  bool nested = false;
  Tensor nested_absmax;  // F32 [ceil(num_blocks / 256)] (nested only)
  Tensor nested_code;    // F32 [256], the signed dynamic map (nested only)
  float offset = 0.0f;   // mean of the absmax subtracted before nesting (nested only)
  int64_t nested_blocksize = 256;
  QuantType quant_type = QuantType::NF4;
  int64_t blocksize = 64;
  Shape shape;                // original shape
  DType dtype = DType::BF16;  // original dtype (F32, BF16 or F16)

  int64_t numel() const { return shape_numel(shape); }
  int64_t num_blocks() const { return (numel() + blocksize - 1) / blocksize; }
};

// Quantizes a CPU tensor (F32, BF16 or F16, any shape). blocksize: a power of two in [32, 4096]. backend:
// whose bytes to reproduce, bitsandbytes' CPU path (the rules above) or its CUDA kernels (bnb_cuda_rules.h).
Quant4Tensor quantize_4bit(const Tensor& x, QuantType qt, int64_t blocksize = 64, bool double_quant = false,
                           BnbBackend backend = BnbBackend::Cpu);
// Dequantizes to the original shape, in the original dtype or in `out_dtype` (F32, BF16, F16).
Tensor dequantize_4bit(const Quant4Tensor& q);
Tensor dequantize_4bit(const Quant4Tensor& q, DType out_dtype);
// The per-block f32 absmax (undoing double quantization when nested). [num_blocks]
Tensor quant4_absmax_f32(const Quant4Tensor& q);
// Checks every field against the others (sizes, dtypes, block size); throws ErrorKind::Format naming
// `context` (e.g. the tensor name) on the first inconsistency.
void validate_quant4(const Quant4Tensor& q, const std::string& context);

// Raw kernels on host memory (also the reference for the CUDA ones).
// x: n values of dtype (F32/BF16/F16); packed: (n + 1) / 2 bytes; absmax: ceil(n / blocksize) floats.
void quantize_4bit_raw(const void* x, DType dtype, int64_t n, int64_t blocksize, QuantType qt,
                       uint8_t* packed, float* absmax);
// out: n values of out_dtype.
void dequantize_4bit_raw(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                         QuantType qt, DType out_dtype, void* out);

}  // namespace qtune
