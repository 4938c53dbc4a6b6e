// Device helpers shared by the quant/ kernels: the 4-bit code book as a kernel argument, bitsandbytes'
// fast-math steps of quantization, f32 rounding to bf16 / f16 as the CPU's round_to does, the absmax of a
// block from either absmax form, and a grid size for grid-stride loops. Internal to quant/cuda.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"
#include "quant/codebook.h"
#include "quant/quant_cuda.h"

namespace qtune {
namespace quant_cuda {

// The 16 code values (index = nibble) as bitsandbytes' CUDA dequantize has them: FP4's code 8 is -0.
struct Code4 {
  float code[16];
};
Code4 make_code4(QuantType qt);

// Rounding steps: 0 none (F32), 1 bf16, 2 f16.
int round_kind(DType dt);
// The float kind of a tensor dtype for load_kind / store_kind; throws Usage for non-float dtypes.
int float_kind(DType dt, const char* what);
__device__ __forceinline__ float round_step(int kind, float v) {
  if (kind == 1) return __bfloat162float(__float2bfloat16_rn(v));
  if (kind == 2) return __half2float(__float2half_rn(v));
  return v;
}

__device__ __forceinline__ float load_f32(float v) {
  return v;
}
__device__ __forceinline__ float load_f32(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
__device__ __forceinline__ float load_f32(__half v) {
  return __half2float(v);
}

// Runtime-typed element access for values touched once per output (bias, results): kind 0 F32, 1 BF16,
// 2 F16 (round_kind's numbering).
__device__ __forceinline__ float load_kind(const void* p, int64_t i, int kind) {
  if (kind == 1) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  if (kind == 2) return __half2float(static_cast<const __half*>(p)[i]);
  return static_cast<const float*>(p)[i];
}
__device__ __forceinline__ void store_kind(void* p, int64_t i, int kind, float v) {
  if (kind == 1)
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  else if (kind == 2)
    static_cast<__half*>(p)[i] = __float2half_rn(v);
  else
    static_cast<float*>(p)[i] = v;
}

// bitsandbytes' CUDA arithmetic (fast math, bnb_cuda_rules.h): subnormal inputs and results flushed to zero,
// the approximate reciprocal. The absmax step max(a, |x|), the reciprocal, a product (x · inv, code ·
// absmax).
__device__ __forceinline__ float bnb_max(float a, float b) {  // NaN ignored
  float r;
  asm("max.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float bnb_absmax_step(float a, float x) {
  return bnb_max(a, fabsf(x));
}
__device__ __forceinline__ float bnb_reciprocal(float a) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(a));
  return r;
}
__device__ __forceinline__ float bnb_scaled(float x, float inv) {
  float r;
  asm("mul.rn.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(x), "f"(inv));
  return r;
}

// LLM.int8's row scale 127 / absmax as bitsandbytes' kInt8VectorQuant computes it (`__fdividef` under fast
// math: 127 times the approximate reciprocal).
__device__ __forceinline__ float bnb_int8_scale(float absmax) {
  return bnb_scaled(127.0f, bnb_reciprocal(absmax));
}

// absmax of block blk; ncode: the nested code book in shared memory (nested form only). The product as
// bitsandbytes' CUDA dequantize_blockwise computes it (flushed to zero when subnormal), then the offset.
__device__ __forceinline__ float block_absmax(const Absmax4View& am, int64_t blk, const float* ncode) {
  if (am.absmax) return am.absmax[blk];
  return __fadd_rn(bnb_scaled(ncode[am.qabsmax[blk]], am.nested_absmax[blk >> 8]), am.offset);
}

// std::max / std::min as the CPU code evaluates them ((a < b) ? b : a), NaN handling included.
__device__ __forceinline__ float cpu_max(float a, float b) {
  return (a < b) ? b : a;
}
__device__ __forceinline__ float cpu_min(float a, float b) {
  return (b < a) ? b : a;
}

// Blocks for a grid-stride loop over `work` items with `threads` per block (at most 16 blocks per SM).
int grid_blocks(int64_t work, int threads);

void check_launch(const char* kernel);
// The current device's multiProcessorCount and maxThreadsPerMultiProcessor (which set torch's reduction
// layout, torch_cuda_mean_f32).
void device_sm_shape(int* sms, int* threads_per_sm);

}  // namespace quant_cuda
}  // namespace qtune

// Binds T to the C++ element type of a float dtype (F32, BF16, F16) and runs the body.
#define QT_QUANT_DISPATCH(dtype, what, T, ...)                                                        \
  do {                                                                                                \
    switch (dtype) {                                                                                  \
      case ::qtune::DType::F32: {                                                                     \
        using T = float;                                                                              \
        __VA_ARGS__;                                                                                  \
      } break;                                                                                        \
      case ::qtune::DType::BF16: {                                                                    \
        using T = __nv_bfloat16;                                                                      \
        __VA_ARGS__;                                                                                  \
      } break;                                                                                        \
      case ::qtune::DType::F16: {                                                                     \
        using T = __half;                                                                             \
        __VA_ARGS__;                                                                                  \
      } break;                                                                                        \
      default:                                                                                        \
        ::qtune::throw_error(::qtune::ErrorKind::Usage, what, ": dtype ", ::qtune::dtype_name(dtype), \
                             " is not supported (F32, BF16 or F16)");                                 \
    }                                                                                                 \
  } while (0)
