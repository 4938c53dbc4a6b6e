// bitsandbytes' CUDA quantizers, reproduced on the host. bitsandbytes gives different bytes on the CPU and on
// CUDA, so transformers + bitsandbytes write one of two results for the same weights; qtune matches both:
// quant4.h / blockwise8.h follow its CPU (torch) backend, this file and the CUDA kernels of quant/cuda its
// CUDA kernels (libbitsandbytes_cuda kQuantizeBlockwise). Its kernels are built with fast math: every f32
// operation below flushes subnormal inputs and results to zero (FMNMX.FTZ, FMUL.FTZ, FSETP.FTZ in its
// SASS), written ftz() here. The CUDA rules, per block of `blocksize` values:
//   absmax a = max ftz(|x|) (f32; NaN ignored; a partial last block counts its zero padding; a block of
//     subnormals has absmax 0), stored as is (no clamp for a partial block);
//   v = ftz(ftz(x) * inv), inv = ftz(1 / a) (an all-zero block gives NaN, which takes code 0), no clamp;
//   NF4: code = the number of the 15 fixed f32 thresholds t with v > t (double-precision midpoints of the
//     code values written as f32 literals);
//   FP4: code = (v < 0 ? 8 : 0) + the magnitude code of |v| from 7 fixed thresholds (0.00260417, 0.0859375,
//     0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333), a tie going to the lower magnitude; so a
//     tiny negative value takes code 8 (-0) and a tiny positive one code 0, the reverse of the CPU path, and
//     a value whose v is subnormal takes code 0;
//   8-bit (double quant and quantize_blockwise): a 7-step binary search of the 256-value code book from
//     entry 127, then the final pivot or the bracket beyond the f32 midpoint between them (code8 in the
//     .cpp), which is not always the nearest code.
// Double quant: offset = torch's CUDA mean of the absmax (torch_cuda_mean_f32, double_quant.h), then
// absmax - offset in 8-bit with the rules above, blocks of 256.
//
// What the host cannot reproduce: 1 / a is the GPU's approximate reciprocal (MUFU.RCP), which can be one
// ulp off, so a v within an ulp or two of a threshold can take the neighbouring code here (about one value
// in 10^5 in the goldens, tests/quant: *.CudaBackendMatchesGoldens). The CUDA kernels use that instruction
// and match bitsandbytes bit for bit.
#pragma once
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "quant/codebook.h"

namespace qtune {

// The code of one scaled value v = x / absmax: 4-bit (NF4 / FP4) and 8-bit (code: 256 ascending values).
uint8_t bnb_cuda_code4(QuantType qt, float v);
uint8_t bnb_cuda_code8(const float* code, float v);
// The scaled value of x in a block whose reciprocal absmax is inv, and that reciprocal (correctly rounded
// here, approximate on the GPU), with bitsandbytes' flush to zero.
float bnb_cuda_scaled(float x, float inv);
float bnb_cuda_reciprocal(float absmax);

// x: n values of dtype (F32, BF16, F16) on the host; packed (n + 1) / 2 bytes; absmax ceil(n / blocksize).
void quantize_4bit_cuda_rules_raw(const void* x, DType dtype, int64_t n, int64_t blocksize, QuantType qt,
                                  uint8_t* packed, float* absmax);
// code: 256 ascending values. q: n bytes; absmax ceil(n / blocksize).
void quantize_8bit_cuda_rules_raw(const void* x, DType dtype, int64_t n, const float* code, int64_t blocksize,
                                  uint8_t* q, float* absmax);

}  // namespace qtune
