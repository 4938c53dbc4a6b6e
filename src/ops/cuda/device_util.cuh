// Device-side helpers shared by the ops/cuda kernels: element loads/stores that convert to and from
// f32 (bf16, f16, f32 storage), warp reductions, and a dtype switch for launching typed kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "core/cuda_pdl.cuh"
#include "core/error.h"
#include "core/row_norm.cuh"
#include "core/tensor.h"

namespace qtune {
namespace cuda {

__device__ __forceinline__ float to_f32(float x) {
  return x;
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float to_f32(__half x) {
  return __half2float(x);
}

template <class T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half_rn(x);
}

// Eight consecutive elements as f32, and back with one rounding each.
__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float (&v)[8]) {
  uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int j = 0; j < 4; j++) {
    float2 f = __bfloat1622float2(h[j]);
    v[2 * j] = f.x;
    v[2 * j + 1] = f.y;
  }
}
__device__ __forceinline__ void store8(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, const float (&v)[8]) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int j = 0; j < 4; j++) h[j] = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}

__device__ __forceinline__ void load8(const __half* p, float (&v)[8]) {
  uint4 u = *reinterpret_cast<const uint4*>(p);
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int j = 0; j < 4; j++) {
    float2 f = __half22float2(h[j]);
    v[2 * j] = f.x;
    v[2 * j + 1] = f.y;
  }
}
__device__ __forceinline__ void store8(__half* p, const float (&v)[8]) {
  uint4 u;
  __half2* h = reinterpret_cast<__half2*>(&u);
#pragma unroll
  for (int j = 0; j < 4; j++) h[j] = __floats2half2_rn(v[2 * j], v[2 * j + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}

// Whether an element-wise kernel may work in packs of eight: n % 8 == 0 and every tensor's data aligned to
// eight of its elements (16-byte vector loads and stores for 16-bit types, two for f32).
inline bool packs_of_8(int64_t n, std::initializer_list<const Tensor*> ts) {
  bool ok = n % 8 == 0;
  for (const Tensor* t : ts) ok = ok && (uintptr_t)t->raw() % dtype_nbytes(t->dtype(), 8) == 0;
  return ok;
}

// warp_sum and block_rstd live in core/row_norm.cuh (the 4-bit GEMV's fused norm shares them).
using ::qtune::block_rstd;
using ::qtune::warp_sum;
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

inline int ceil_div(int64_t a, int64_t b) {
  return (int)((a + b - 1) / b);
}

}  // namespace cuda
}  // namespace qtune

// Calls FN with the C++ element type of a float dtype bound to the name given as TYPE:
// QT_DISPATCH_FLOAT(t.dtype(), "rmsnorm", scalar_t, { kernel<scalar_t><<<...>>>(...); });
#define QT_DISPATCH_FLOAT(dtype, op, TYPE, ...)                                           \
  do {                                                                                    \
    switch (dtype) {                                                                      \
      case ::qtune::DType::F32: {                                                         \
        using TYPE = float;                                                               \
        __VA_ARGS__;                                                                      \
      } break;                                                                            \
      case ::qtune::DType::BF16: {                                                        \
        using TYPE = __nv_bfloat16;                                                       \
        __VA_ARGS__;                                                                      \
      } break;                                                                            \
      case ::qtune::DType::F16: {                                                         \
        using TYPE = __half;                                                              \
        __VA_ARGS__;                                                                      \
      } break;                                                                            \
      default:                                                                            \
        ::qtune::throw_error(::qtune::ErrorKind::Unsupported, op, ": unsupported dtype ", \
                             ::qtune::dtype_name(dtype));                                 \
    }                                                                                     \
  } while (0)
