// Device pieces shared by the fused LoRA kernels (lora_fused.cu: the 16-byte cp.async path;
// lora_fused_generic.cu: any shape): the dropout mask as the kernels apply it, bf16 pair loads, and the
// deterministic split-K finish. Internal to train/cuda.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "core/tensor.h"
#include "ops/cuda/mma_util.cuh"
#include "train/lora_fused.h"

namespace qtune {
namespace lora_kernels {

using bf16 = __nv_bfloat16;
constexpr int kWarps = 8;  // warps of a lora_down / lora_down_grad block

// The LoraMask as the kernels apply it: add2 = (0x8000 − threshold) in both 16-bit halves.
struct Mask {
  uint64_t seed, e0;
  uint32_t thr, add2;
  bool on;
};

inline Mask kernel_mask(const LoraMask* m) {
  Mask k{0, 0, 0, 0, false};
  if (m && m->threshold > 0) {
    const uint32_t a = 0x8000u - m->threshold;
    k = Mask{m->seed, m->e0, m->threshold, a | (a << 16), true};
  }
  return k;
}

// Whether element i of the masked tensor is kept (lora_mask_keeps).
__device__ __forceinline__ bool keeps(const Mask& m, uint64_t i) {
  const uint64_t e = m.e0 + i;
  return ((lora_mask_mix(m.seed + (e >> 2)) >> (16 * (e & 3))) & 0x7FFF) >= m.thr;
}

// An AND mask for a bf16 pair from 32 bits of hash: a half whose 15-bit field is >= threshold carries into
// its bit 15 when 0x8000 − threshold is added, and prmt's sign mode (selector nibbles 9 and B: the sign of
// bytes 1 and 3) replicates that bit over the half. (__byte_perm drops the sign bit of the selector: PTX it
// is.)
__device__ __forceinline__ uint32_t pair_keep(uint32_t h, uint32_t add2) {
  uint32_t r;
  asm("prmt.b32 %0, %1, 0, 0xBB99;" : "=r"(r) : "r"((h & 0x7FFF7FFFu) + add2));
  return r;
}

// Applies the mask to 8 bf16 (raw bits) that start at element i of the masked tensor (e0 + i % 4 == 0).
__device__ __forceinline__ void mask8(uint4& v, const Mask& m, uint64_t i) {
  const uint64_t q = (m.e0 + i) >> 2;
  const uint64_t h0 = lora_mask_mix(m.seed + q), h1 = lora_mask_mix(m.seed + q + 1);
  v.x &= pair_keep((uint32_t)h0, m.add2);
  v.y &= pair_keep((uint32_t)(h0 >> 32), m.add2);
  v.z &= pair_keep((uint32_t)h1, m.add2);
  v.w &= pair_keep((uint32_t)(h1 >> 32), m.add2);
}

// Elements k, k+1 of row `row` of p [rows, r] as a bf16 pair (k in the low half), zero outside.
__device__ __forceinline__ uint32_t pair(const uint16_t* p, int64_t rows, int r, int64_t row, int k) {
  if (row >= rows) return 0u;
  const uint32_t lo = k < r ? __ldg(p + row * r + k) : 0u, hi = k + 1 < r ? __ldg(p + row * r + k + 1) : 0u;
  return lo | (hi << 16);
}

// acc += one 16-wide k slice of rows × columns: x0 / x1 hold 8 bf16 of the lane's rows g and g + 8, w 8 bf16
// of its column g (the k order of both is the lane's 8 consecutive elements, as the loads give them).
__device__ __forceinline__ void mma_k16(float (&acc)[4], const uint4& x0, const uint4& x1, const uint4& w) {
  const uint32_t a0[4] = {x0.x, x1.x, x0.y, x1.y};
  cuda::mma_bf16_16816(acc, a0, w.x, w.y);
  const uint32_t a1[4] = {x0.z, x1.z, x0.w, x1.w};
  cuda::mma_bf16_16816(acc, a1, w.z, w.w);
}

// An m16n8 MMA accumulator fragment into a row-major f32 tile at t (this lane's first element), rows `stride`
// floats apart: elements 0, 1 in the lane's row, 2, 3 eight rows below.
__device__ __forceinline__ void store_fragment(float* t, const float (&a)[4], int stride) {
  t[0] = a[0];
  t[1] = a[1];
  t[8 * stride] = a[2];
  t[8 * stride + 1] = a[3];
}

// The same fragment where the MMA's rows are the tile's columns (features) and its columns the tile's rows:
// elements 0, 1 eight features apart in the lane's row, 2, 3 eight rows below.
__device__ __forceinline__ void store_fragment_t(float* t, const float (&a)[4], int stride) {
  t[0] = a[0];
  t[8] = a[1];
  t[8 * stride] = a[2];
  t[8 * stride + 8] = a[3];
}

// v[q] = Σ_w red[w·T + e] over the block's kWarps per-warp tiles, e = threadIdx.x + 256·q (0 past T).
template <int E, int T>
__device__ __forceinline__ void sum_warp_tiles(const float* red, float (&v)[E]) {
#pragma unroll
  for (int q = 0; q < E; q++) {
    const int e = threadIdx.x + 256 * q;
    v[q] = 0.0f;
    if (e < T)
      for (int w = 0; w < kWarps; w++) v[q] += red[w * T + e];
  }
}

// The split-K finish of lora_down and lora_down_grad: v[E] are this block's sums of tile elements
// e = threadIdx.x + 256·q (blocks of 256 threads). With one split they are final. Otherwise each block stores
// its partial; the block that arrives last (counted in counters[tile]) reads all splits back and sums them in
// split order, resets the counter, and returns true with the totals in v; the others return false.
template <int E, int T>
__device__ __forceinline__ bool finish_splits(float (&v)[E], float* partial, unsigned* counters, int64_t tile,
                                              int split, int splits) {
  if (splits == 1) return true;
  __shared__ bool last;
  float* mine = partial + (tile * splits + split) * T;
#pragma unroll
  for (int q = 0; q < E; q++)
    if (threadIdx.x + 256 * q < T) mine[threadIdx.x + 256 * q] = v[q];
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&counters[tile], 1u) == (unsigned)splits - 1;
  __syncthreads();
  if (!last) return false;
  __threadfence();
#pragma unroll
  for (int q = 0; q < E; q++) {
    const int e = threadIdx.x + 256 * q;
    v[q] = 0.0f;
    if (e < T)
      for (int s = 0; s < splits; s++) v[q] += __ldcg(partial + (tile * splits + s) * T + e);
  }
  if (threadIdx.x == 0) counters[tile] = 0;
  return true;
}

// Host: the zeroed counters of finish_splits (each last block resets its tiles'), at least n of them, and
// scratch for the splits' partial sums (at least n floats). Both grow only and are reused by the next launch:
// the kernels run in order on the one stream.
unsigned* split_counters(int64_t n);
float* split_partials(int64_t n);

// The kernels for shapes off the 16-byte path (lora_fused_generic.cu): element loads, same results.
void lora_down_generic(Tensor& out, const Tensor& x, const Tensor& w, float scale, const Mask& m);
void lora_down_grad_generic(Tensor& g, const Tensor& d, const Tensor& x, float scale, const Mask& m,
                            bool g_kr);

}  // namespace lora_kernels
}  // namespace qtune
