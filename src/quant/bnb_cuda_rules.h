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

#ifdef __CUDACC__
#define QT_BNB_HD __host__ __device__
#define QT_BNB_UNROLL _Pragma("unroll")
#else
#define QT_BNB_HD
#define QT_BNB_UNROLL
#endif

// The code of one scaled value v = x / absmax (already flushed), shared by the host model and the kernels:
// 4-bit (NF4 / FP4) and 8-bit (code: 256 ascending values).
QT_BNB_HD inline uint8_t bnb_cuda_code4(QuantType qt, float v) {
  if (qt == QuantType::NF4) {  // dQuantizeNF4's decision tree as a count of the thresholds below v
    constexpr float t[15] = {-0.8480964004993439f,   -0.6106329262256622f,  -0.4599952697753906f,
                             -0.33967943489551544f,  -0.23460740596055984f, -0.13791173323988914f,
                             -0.045525018125772476f, 0.03979014977812767f,  0.1202552504837513f,
                             0.2035212516784668f,    0.2920137718319893f,   0.3893125355243683f,
                             0.5016634166240692f,    0.6427869200706482f,   0.8614784181118011f};
    int c = 0;
QT_BNB_UNROLL
    for (int i = 0; i < 15; i++) c += v > t[i];
    return (uint8_t)c;
  }
  // dQuantizeFP4: the sign from v < 0, the magnitude slot from 7 thresholds; slots 0..7 hold the magnitude
  // codes 0, 1, 6, 7, 4, 5, 2, 3 (slot ^ ((slot & 2) << 1)).
  constexpr float t[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                          0.4166667f,  0.583333f,  0.8333333f};
  const float m = v < 0.0f ? -v : v;
  int slot = 0;
QT_BNB_UNROLL
  for (int i = 0; i < 7; i++) slot += m > t[i];
  return (uint8_t)((v < 0.0f ? 8 : 0) + (slot ^ ((slot & 2) << 1)));
}

// dQuantize<0>: seven halving steps from entry 127 keep the last entries below (lower) and above (upper) v,
// bounded by -1 and 1 (by the end entries when a side never moved); then v goes to the final pivot or, past
// the f32 midpoint between the pivot and that bracket, to the bracket.
QT_BNB_HD inline uint8_t bnb_cuda_code8(const float* code, float v) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f, val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (v > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (v > val) return (uint8_t)(v > (upper + val) * 0.5f ? upper_pivot : pivot);
  return (uint8_t)(v < (lower + val) * 0.5f ? lower_pivot : pivot);
}
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
