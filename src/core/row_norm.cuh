// RMSNorm of one row spread over a block: the thread count and the sum-of-squares reduction that
// rmsnorm_forward, add_rmsnorm and the 4-bit GEMV's fused input norm (quant_cuda.h, Gemv4Args::norm_w)
// share, so that the three give the same bits.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace qtune {

// Threads over a row of C: thread t sums the packs of eight t, t + threads, ... in order.
__host__ __device__ constexpr int rmsnorm_threads(long long C) {
  return C >= 4096 ? 512 : (C >= 1024 ? 256 : 128);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// 1/sqrt(mean(x²) + eps) for one row spread over the block: ss is this thread's partial sum of squares
// (threads past the row's add zero); every thread gets the result. Needs blockDim.x a multiple of 32 and
// <= 1024.
__device__ __forceinline__ float block_rstd(float ss, int C, float eps) {
  __shared__ float partial[32];
  __shared__ float rstd_s;
  ss = warp_sum(ss);
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    int nw = blockDim.x / 32;
    float v = lane < nw ? partial[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) rstd_s = rsqrtf(v / (float)C + eps);
  }
  __syncthreads();
  return rstd_s;
}

// A fused input norm's passes over 8 bf16 (one 16-byte piece), with add_rmsnorm's arithmetic: r = bf16(x +
// a) and its sum of squares (one multiply-add per element, in order), then bf16(r · rstd · w).
// Element-wise f(x, y) in f32 over two pieces, each result rounded to bf16.
template <class F>
__device__ __forceinline__ uint4 zip_bf16x8(const uint4& x, const uint4& y, F f) {
  uint4 r;
  const __nv_bfloat162 *xh = reinterpret_cast<const __nv_bfloat162*>(&x),
                       *yh = reinterpret_cast<const __nv_bfloat162*>(&y);
  __nv_bfloat162* rh = reinterpret_cast<__nv_bfloat162*>(&r);
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const float2 u = __bfloat1622float2(xh[j]), v = __bfloat1622float2(yh[j]);
    rh[j] = __floats2bfloat162_rn(f(u.x, v.x), f(u.y, v.y));
  }
  return r;
}
__device__ __forceinline__ float sum_squares_bf16x8(const uint4& x, float ss) {
  const __nv_bfloat162* xh = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const float2 u = __bfloat1622float2(xh[j]);
    ss += u.x * u.x;
    ss += u.y * u.y;
  }
  return ss;
}

}  // namespace qtune
