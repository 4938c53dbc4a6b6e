// LLM.int8 kernels (rules in quant_cuda.h and int8.h): row-wise int8 quantization with outlier flags, the
// ordered list of outlier columns with the data the epilogue needs at them, the epilogue that turns int32
// products into the output, and a __dp4a GEMV for a few rows. The epilogue follows the CPU forward
// (model/quant_linear.cpp) operation by operation, so given the same int32 products it produces the same
// f32 value before the final rounding to the output dtype:
//   acc' = acc − Σ_j qa[m, c_j] · qb[o, c_j]          (exact: the GEMM also multiplied the outlier columns)
//   v = ((float)acc' · (sa[m] · sb[o])) · 6.200124e-05;  v += bias[o];
//   v = fma(x[m, c_j], w[o, c_j], v) for each j in order,   w = ((float)qb[o, c_j] · sb[o]) · (1/127)
#include <algorithm>

#include "quant/cuda/quant_device.cuh"

namespace qtune {

using namespace quant_cuda;

namespace {

constexpr int kThreads = 256;
constexpr float kInv127 = 7.874015718698502e-3f;
constexpr float kInv127Sq = 6.200124e-05f;

__device__ __forceinline__ float block_max(float a, float* smem) {
  for (int o = 16; o > 0; o >>= 1) a = cpu_max(a, __shfl_xor_sync(0xffffffffu, a, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  if (lane == 0) smem[warp] = a;
  __syncthreads();
  float r = 0.0f;
  for (int w = 0; w < nw; w++) r = cpu_max(r, smem[w]);
  return r;
}

// Row quantization: the max over elements below the threshold, flags of outlier columns, then codes.
// 16-bit inputs with cols % 8 == 0 go 8 values per 16-byte load and 8 codes per 8-byte store.
// half_word: the low (hi = 0) or high 16-bit value of a 32-bit word as f32.
template <class T>
__device__ __forceinline__ float half_word(uint32_t w, int hi);
template <>
__device__ __forceinline__ float half_word<__nv_bfloat16>(uint32_t w, int hi) {
  return __uint_as_float(hi ? (w & 0xFFFF0000u) : (w << 16));
}
template <>
__device__ __forceinline__ float half_word<__half>(uint32_t w, int hi) {
  return __half2float(__ushort_as_half((unsigned short)(hi ? (w >> 16) : (w & 0xFFFFu))));
}
template <>
__device__ __forceinline__ float half_word<float>(uint32_t, int) {
  return 0.0f;  // unused: f32 rows take the scalar path
}

// The 8 values of a 16-byte load of 16-bit T, rounded to f16 when round_f16.
template <class T>
__device__ __forceinline__ void unpack8(const uint4& u, bool round_f16, float (&v)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const float f = half_word<T>(w[i / 2], i % 2);
    v[i] = round_f16 ? __half2float(__float2half_rn(f)) : f;
  }
}

// q = round_half_even(v · s) clamped to ±127 (0 when the row's scale a is 0), 8 codes as one 8-byte word.
__device__ __forceinline__ uint2 codes8(const float (&v)[8], float a, float s) {
  uint32_t w[2] = {0u, 0u};
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int r = a == 0.0f ? 0 : __float2int_rn(__fmul_rn(v[i], s));
    w[i / 4] |= (uint32_t)(uint8_t)(int8_t)max(-127, min(127, r)) << (8 * (i % 4));
  }
  return make_uint2(w[0], w[1]);
}

// One warp per row, or wpr = 2 or 4 warps for rows longer than kWarpCols (rows of 16-bit T rounded to f16,
// cols <= kWarpMaxCols, cols % 8 == 0, x 16-byte and q 8-byte aligned). The row is read once into registers,
// 16 bytes per lane and load, and kept there as f16 pairs. The max below the threshold and the outlier test
// run on those pairs (exact: the values are f16, and x >= thr holds for an f16 x exactly when x >= thr
// rounded up to f16); the max is a warp shuffle reduction. The codes: t = v · s in f32 as before, rounded
// half to even by adding 1.5 · 2^23 (the integer lands in the low mantissa bits), clamped to ±127 first only
// in the 16-byte pieces holding an outlier (elsewhere |t| <= 127 by the choice of s). Rows with a NaN, or
// with a scale of 0 or infinity, take codes8 (F2I) so that they keep its results. The block's warps collect
// their outlier columns in a shared bitmap and the block sets each flag once; which values are outliers (or
// NaN) is worked out only in the 16-byte pieces that hold a value not below the threshold. 2048 rows of 4096
// in the forward on the H200 (ncu): 12.4 µs with threshold 6, 11.3 µs without (14.5 / 13.1 with f32
// conversions and F2I for every value).
constexpr int kWarpHeld = 16;
constexpr int kWarpCols = 32 * 8 * kWarpHeld;  // the columns one warp holds
constexpr int kWarpMaxCols = 4 * kWarpCols;    // up to 4 warps per row
constexpr int kWarpThreads = 512;  // 16 warps: 128 blocks for 2048 rows of 4096, one per SM at 112 registers

template <class T>
__device__ __forceinline__ uint32_t f16_pair(uint32_t w);
template <>
__device__ __forceinline__ uint32_t f16_pair<__nv_bfloat16>(uint32_t w) {
  const __half2 h = __floats2half2_rn(__uint_as_float(w << 16), __uint_as_float(w & 0xFFFF0000u));
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t f16_pair<__half>(uint32_t w) {
  return w;
}
template <>
__device__ __forceinline__ uint32_t f16_pair<float>(uint32_t w) {
  return w;  // unused: f32 rows take the block kernel
}

__device__ __forceinline__ __half2 as_half2(uint32_t w) {
  return *reinterpret_cast<const __half2*>(&w);
}

// 127 / absmax as bitsandbytes' CUDA kernel (cuda_scale: the approximate reciprocal) or its CPU path
// ((1 / absmax) · 127) computes it.
__device__ __forceinline__ float row_scale(float a, bool cuda_scale) {
  return cuda_scale ? bnb_int8_scale(a) : __fmul_rn(__fdiv_rn(1.0f, a), 127.0f);
}

// The code byte of t (|t| <= 127.5 or clamped): round half to even through the 1.5 · 2^23 addition.
__device__ __forceinline__ uint32_t code_bits(float t) {
  return __float_as_uint(__fadd_rn(t, 12582912.0f));
}

template <class T>
__global__ void __launch_bounds__(kWarpThreads)
    quant_rows_warp_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, float thr, int wpr,
                           int8_t* __restrict__ q, float* __restrict__ scale, uint8_t* __restrict__ flags,
                           bool cuda_scale) {
  __shared__ uint32_t s_out[kWarpMaxCols / 32];  // bit c: column c holds an outlier in one of the rows
  __shared__ float s_max[kWarpThreads / 32];     // per warp: its part's max
  __shared__ bool s_exact[kWarpThreads / 32];    // per warp: no NaN in its part
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * ((blockDim.x >> 5) / wpr) + warp / wpr;
  const int c0 = (warp % wpr) * kWarpCols;  // the warp's first column
  const int words = (int)((cols + 31) / 32);
  const bool use_thr = thr > 0.0f;
  if (use_thr) {
    for (int i = threadIdx.x; i < words; i += blockDim.x) s_out[i] = 0u;
    __syncthreads();
  }
  const bool active = row < rows;  // inactive warps still meet the row barrier
  {
    const T* xr = x + row * cols;  // [cols]
    int8_t* qr = q + row * cols;   // [cols]
    uint4 held[kWarpHeld];
#pragma unroll
    for (int k = 0; k < kWarpHeld; k++) {
      const int c = c0 + (k * 32 + lane) * 8;
      if (active && c < cols) held[k] = __ldg(reinterpret_cast<const uint4*>(xr + c));
    }
    const __half thr16 = __float2half_ru(thr);
    const __half2 thr2 = __halves2half2(thr16, thr16);
    __half2 m2 = __float2half2_rn(0.0f);
    uint32_t ok = 0xFFFFFFFFu;  // a NaN somewhere clears bits
    uint32_t out_k = 0;         // bit k: piece k holds an outlier
#pragma unroll
    for (int k = 0; k < kWarpHeld; k++) {
      const int c = c0 + (k * 32 + lane) * 8;
      if (!active || c >= cols) break;
      uint32_t* hw = reinterpret_cast<uint32_t*>(&held[k]);
      uint32_t not_below = 0;  // bits of values not below the threshold: outliers or NaN (rare)
#pragma unroll
      for (int w = 0; w < 4; w++) {
        hw[w] = f16_pair<T>(hw[w]);
        const __half2 a2 = __habs2(as_half2(hw[w]));
        if (use_thr) {
          const uint32_t lt = __hlt2_mask(a2, thr2);
          m2 = __hmax2(m2, as_half2(*reinterpret_cast<const uint32_t*>(&a2) & lt));
          not_below |= ~lt;
        } else {
          m2 = __hmax2(m2, a2);
          ok &= __heq2_mask(a2, a2);
        }
      }
      if (not_below) {  // which values are outliers, which NaN
        uint32_t bits = 0;
#pragma unroll
        for (int w = 0; w < 4; w++) {
          const __half2 a2 = __habs2(as_half2(hw[w]));
          const uint32_t ge = __hge2_mask(a2, thr2);
          ok &= __hlt2_mask(a2, thr2) | ge;
          bits |= ((ge & 1u) | ((ge >> 15) & 2u)) << (2 * w);
        }
        if (bits) {
          out_k |= 1u << k;
          atomicOr(&s_out[c >> 5], bits << (c & 31));
        }
      }
    }
    __half m = __hmax(__low2half(m2), __high2half(m2));
    for (int o = 16; o > 0; o >>= 1) m = __hmax(m, __shfl_xor_sync(0xffffffffu, m, o));
    float a = __half2float(m);
    bool exact = __all_sync(0xffffffffu, ok == 0xFFFFFFFFu);
    if (wpr > 1) {  // the row's warps: max over their parts (exact maxima), NaN anywhere in the row
      if (lane == 0) {
        s_max[warp] = a;
        s_exact[warp] = exact;
      }
      __syncthreads();
      for (int w = warp - warp % wpr; w < warp - warp % wpr + wpr; w++) {
        a = fmaxf(a, s_max[w]);
        exact = exact && s_exact[w];
      }
    }
    exact = exact && a > 0.0f && a != INFINITY;
    if (active && lane == 0 && c0 == 0) scale[row] = a;
    const float s = row_scale(a, cuda_scale);
#pragma unroll
    for (int k = 0; k < kWarpHeld; k++) {
      const int c = c0 + (k * 32 + lane) * 8;
      if (!active || c >= cols) break;
      const uint32_t* hw = reinterpret_cast<const uint32_t*>(&held[k]);
      float v[8];
#pragma unroll
      for (int w = 0; w < 4; w++) {
        const float2 f = __half22float2(as_half2(hw[w]));
        v[2 * w] = f.x;
        v[2 * w + 1] = f.y;
      }
      uint2 codes;
      if (!exact) {
        codes = codes8(v, a, s);
      } else {
        uint32_t u[8];
        const bool clamp = (out_k >> k) & 1u;
#pragma unroll
        for (int i = 0; i < 8; i++) {
          float t = __fmul_rn(v[i], s);
          if (clamp) t = fminf(fmaxf(t, -127.0f), 127.0f);
          u[i] = code_bits(t);
        }
        codes.x = __byte_perm(__byte_perm(u[0], u[1], 0x0040), __byte_perm(u[2], u[3], 0x0040), 0x5410);
        codes.y = __byte_perm(__byte_perm(u[4], u[5], 0x0040), __byte_perm(u[6], u[7], 0x0040), 0x5410);
      }
      *reinterpret_cast<uint2*>(qr + c) = codes;
    }
  }
  if (use_thr) {
    __syncthreads();
    for (int i = threadIdx.x; i < words; i += blockDim.x)
      for (uint32_t mk = s_out[i]; mk; mk &= mk - 1) flags[i * 32 + __ffs(mk) - 1] = 1;
  }
}

// One block per row (the rows the warp kernel does not take). vec: 16-bit T, cols % 8 == 0, x 16-byte and
// q 8-byte aligned.
template <class T>
__global__ void quant_rows_kernel(const T* __restrict__ x, int64_t cols, float thr, bool round_f16,
                                  int8_t* __restrict__ q, float* __restrict__ scale,
                                  uint8_t* __restrict__ flags, bool vec, bool cuda_scale) {
  __shared__ float smem[32];
  const T* xr = x + (int64_t)blockIdx.x * cols;
  int8_t* qr = q + (int64_t)blockIdx.x * cols;
  auto rnd = [&](float v) { return round_f16 ? __half2float(__float2half_rn(v)) : v; };
  auto value = [&](T raw) { return rnd(load_f32(raw)); };
  auto unpack = [&](const uint4& u, float(&v)[8]) { unpack8<T>(u, round_f16, v); };
  float a = 0.0f;
  auto scan = [&](float v, int64_t c) {
    const float f = fabsf(v);
    if (thr > 0.0f && f >= thr) {
      if (!flags[c]) flags[c] = 1;  // most rows find it set already: skip the contended store
    } else {
      a = cpu_max(a, f);
    }
  };
  // A row of up to kHeld · 8 · blockDim.x values stays in registers between the two passes.
  constexpr int kHeld = 4;
  uint4 held[kHeld];
  const int64_t step = (int64_t)blockDim.x * 8;
  const bool hold = vec && cols <= kHeld * step;
  if (hold) {
#pragma unroll
    for (int k = 0; k < kHeld; k++) {
      const int64_t c = threadIdx.x * 8 + k * step;
      if (c < cols) held[k] = __ldg(reinterpret_cast<const uint4*>(xr + c));
    }
#pragma unroll
    for (int k = 0; k < kHeld; k++) {
      const int64_t c = threadIdx.x * 8 + k * step;
      if (c >= cols) break;
      float v[8];
      unpack(held[k], v);
#pragma unroll
      for (int i = 0; i < 8; i++) scan(v[i], c + i);
    }
  } else if (vec) {
    for (int64_t c = threadIdx.x * 8; c < cols; c += step) {
      float v[8];
      unpack(__ldg(reinterpret_cast<const uint4*>(xr + c)), v);
#pragma unroll
      for (int i = 0; i < 8; i++) scan(v[i], c + i);
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) scan(value(xr[c]), c);
  }
  a = block_max(a, smem);
  if (threadIdx.x == 0) scale[blockIdx.x] = a;
  const float s = row_scale(a, cuda_scale);
  auto code = [&](float v) {
    const int r = a == 0.0f ? 0 : __float2int_rn(__fmul_rn(v, s));  // round half to even
    return (int8_t)max(-127, min(127, r));
  };
  if (vec) {
    for (int64_t c = threadIdx.x * 8, k = 0; c < cols; c += step, k++) {
      float v[8];
      uint4 u;
      if (hold) {  // registers indexed by a loop counter: select, so they stay registers
        u = held[0];
#pragma unroll
        for (int h = 1; h < kHeld; h++)
          if (k == h) u = held[h];
      } else {
        u = __ldg(reinterpret_cast<const uint4*>(xr + c));
      }
      unpack(u, v);
      *reinterpret_cast<uint2*>(qr + c) = codes8(v, a, s);
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) qr[c] = code(value(xr[c]));
  }
}

constexpr int kMaxGathered = 64;  // the most outlier columns gathered / staged (the forward's cap)
constexpr int kRowStaged = 8;     // outlier columns per row in qa_c / x_c

// Every block lists the flagged columns in ascending order, 16 flags per thread and load (a block-wide
// exclusive scan of the per-thread counts places them); block 0 writes cols[] and *count. With clear_done
// (a counter at 0), the last block to finish listing sets the flags and the counter back to 0, so the next
// forward needs no memset before its row quantization. Then, over the grid: the weights at the first
// min(count, cap) columns, for every output o,
//   wout[j, o] = ((float)qb[o, c_j] · sb[o]) · (1/127),  qout[o, j] = qb[o, c_j] for j < kRowStaged
//   (0 for j >= count);
// and when qa_c is given, every row's qa and x at the first kRowStaged columns (0 beyond count),
//   qa_c[m, j] = qa[m, c_j],  x_c[m, j] = x[m, c_j].
// vec16: flags 16-byte aligned.
__global__ void __launch_bounds__(1024)
    outliers_kernel(const uint8_t* __restrict__ flags, const Int8Epilogue e, int x_kind, bool vec16,
                    int32_t* __restrict__ cols, int32_t* __restrict__ count, float* __restrict__ wout,
                    int8_t* __restrict__ qout, int cap, int8_t* __restrict__ qa_c, float* __restrict__ x_c,
                    uint32_t* __restrict__ clear_done) {
  __shared__ int s_cols[kMaxGathered];
  __shared__ int s_warp[32];
  __shared__ int s_total;
  __shared__ bool s_last;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  const int64_t K = e.K;
  int base = 0;
  for (int64_t start = 0; start < K; start += (int64_t)blockDim.x * 16) {
    const int64_t c0 = start + threadIdx.x * 16;
    uint32_t mask = 0;  // bit i: column c0 + i is flagged
    if (vec16 && c0 + 16 <= K) {
      const uint4 f = *reinterpret_cast<const uint4*>(flags + c0);
      const uint32_t w[4] = {f.x, f.y, f.z, f.w};
#pragma unroll
      for (int i = 0; i < 16; i++) mask |= (uint32_t)(((w[i / 4] >> (8 * (i % 4))) & 0xFFu) != 0) << i;
    } else {
      for (int i = 0; i < 16 && c0 + i < K; i++) mask |= (uint32_t)(flags[c0 + i] != 0) << i;
    }
    const int n = __popc(mask);
    int incl = n;  // inclusive scan over the warp, then over the warps
    for (int d = 1; d < 32; d <<= 1) {
      const int t = __shfl_up_sync(0xffffffffu, incl, d);
      if (lane >= d) incl += t;
    }
    if (lane == 31) s_warp[warp] = incl;
    __syncthreads();
    if (threadIdx.x == 0) {
      int run = 0;
      for (int w = 0; w < nw; w++) {
        const int t = s_warp[w];
        s_warp[w] = run;
        run += t;
      }
      s_total = run;
    }
    __syncthreads();
    int idx = base + s_warp[warp] + incl - n;
    for (uint32_t m = mask; m; m &= m - 1) {
      const int c = (int)(c0 + __ffs(m) - 1);
      if (idx < kMaxGathered) s_cols[idx] = c;
      if (blockIdx.x == 0) cols[idx] = c;
      idx++;
    }
    base += s_total;
    __syncthreads();
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) *count = base;
  if (clear_done) {  // the block's flag loads have all returned (their values were scanned above)
    if (threadIdx.x == 0) s_last = atomicAdd(clear_done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (s_last) {
      uint8_t* f = const_cast<uint8_t*>(flags);
      for (int64_t c = threadIdx.x; c < K; c += blockDim.x) f[c] = 0;
      if (threadIdx.x == 0) *clear_done = 0u;
    }
  }
  const int n_g = min(base, cap), n_r = qa_c ? min(base, kRowStaged) : 0;
  const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x,
                stride = (int64_t)gridDim.x * blockDim.x;
  // The gathers take a thread kBatch items at a time, all their loads before the first store: the
  // compiler cannot tell the stores from the loads, and each load is a DRAM round trip (beside the GEMM in
  // the forward, in one block, a thread has 16 row items and 4 outputs).
  constexpr int kBatch = 8;
  const int64_t n_rows = qa_c ? e.N * kRowStaged : 0;
  for (int64_t i0 = tid; i0 < n_rows; i0 += stride * kBatch) {
    int8_t qv[kBatch];
    float xv[kBatch];
#pragma unroll
    for (int t = 0; t < kBatch; t++) {
      const int64_t i = i0 + t * stride, m = i / kRowStaged;
      const int j = (int)(i - m * kRowStaged);
      const bool in = i < n_rows && j < n_r;
      qv[t] = in ? e.qa[m * K + s_cols[j]] : 0;
      xv[t] = in ? load_kind(e.x, m * K + s_cols[j], x_kind) : 0.0f;
    }
#pragma unroll
    for (int t = 0; t < kBatch; t++) {
      const int64_t i = i0 + t * stride;
      if (i < n_rows) {
        qa_c[i] = qv[t];
        x_c[i] = xv[t];
      }
    }
  }
  const int64_t n_outs = n_g > 0 ? e.O : 0;
  for (int64_t o = tid; o < n_outs && n_g < kRowStaged; o += stride)  // qout's unused slots: 0
    for (int j = n_g; j < kRowStaged; j++) qout[o * kRowStaged + j] = 0;
  for (int64_t o0 = tid; o0 < n_outs; o0 += stride * kBatch) {
    float so[kBatch];
#pragma unroll
    for (int t = 0; t < kBatch; t++) so[t] = o0 + t * stride < n_outs ? e.sb[o0 + t * stride] : 0.0f;
    for (int j0 = 0; j0 < n_g; j0 += 4) {
      int8_t qv[kBatch][4];
#pragma unroll
      for (int t = 0; t < kBatch; t++)
#pragma unroll
        for (int u = 0; u < 4; u++) {
          const int64_t o = o0 + t * stride;
          qv[t][u] = o < n_outs && j0 + u < n_g ? e.qb[o * K + s_cols[j0 + u]] : 0;
        }
#pragma unroll
      for (int t = 0; t < kBatch; t++)
#pragma unroll
        for (int u = 0; u < 4; u++) {
          const int64_t o = o0 + t * stride;
          if (o < n_outs && j0 + u < n_g) {
            if (j0 + u < kRowStaged) qout[o * kRowStaged + j0 + u] = qv[t][u];
            wout[(j0 + u) * e.O + o] = __fmul_rn(__fmul_rn((float)qv[t][u], so[t]), kInv127);
          }
        }
    }
  }
}

// The output value of (m, o) from its int32 product over all K columns (see the file comment).
__device__ __forceinline__ float finish(int32_t acc, int64_t m, int64_t o, const Int8Epilogue& e, int n_out,
                                        int x_kind, int bias_kind) {
  for (int j = 0; j < n_out; j++) {
    const int64_t c = e.cols[j];
    acc -= (int32_t)e.qa[m * e.K + c] * (int32_t)e.qb[o * e.K + c];
  }
  float v = __fmul_rn(__fmul_rn((float)acc, __fmul_rn(e.sa[m], e.sb[o])), kInv127Sq);
  if (e.bias) v = __fadd_rn(v, load_kind(e.bias, o, bias_kind));
  for (int j = 0; j < n_out; j++) {
    const int64_t c = e.cols[j];
    const float w = __fmul_rn(__fmul_rn((float)e.qb[o * e.K + c], e.sb[o]), kInv127);
    v = fmaf(load_kind(e.x, m * e.K + c, x_kind), w, v);
  }
  return v;
}

// Grid: x over tiles of 1024 outputs (256 threads × 4 adjacent outputs), y over groups of kEpiRows rows. A
// thread issues the loads of its int32 products for all kEpiRows rows first, together with what the first
// kRowStaged outlier columns need, none of which waits for the count: its rows' qa there (qa_c, 8 bytes a
// row, 0 past the count) and its outputs' weights there (qout, 8 bytes an output, 0 past the count), so
// their integer correction is two __dp4a per output whatever the count. The outlier terms in f32 then run
// over the count, with x from x_c and the weight column from wout. Columns beyond kRowStaged (rare) are
// staged in shared memory through cols, and beyond the gathered ones read in place.
// vec: O % 4 == 0 and the pointers aligned for the 16-byte (acc, sb, wout, f32 out), 8-byte (bf16 out,
// qa_c) and 32-byte (qout) accesses; otherwise finish() per output.
constexpr int kEpiRows = 8;
constexpr int kEpiThreads = 256;

template <bool kOutliers>  // e.count given
__global__ void __launch_bounds__(kEpiThreads, 2)
    epilogue_kernel(const int32_t* __restrict__ acc, const Int8Epilogue e, int x_kind, int bias_kind,
                    int out_kind, bool vec) {
  __shared__ int s_qa[kEpiRows][kMaxGathered];
  __shared__ float s_x[kEpiRows][kMaxGathered];
  const int64_t m0 = (int64_t)blockIdx.y * kEpiRows;
  const int rows = (int)(e.N - m0 < kEpiRows ? e.N - m0 : kEpiRows);
  const int64_t o = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
  const bool live = o < e.O;
  const int64_t os = live ? o : 0;  // lanes past O compute on output 0 (the shuffles need every lane)
  const int lane = threadIdx.x & 31;
  constexpr bool has_out = kOutliers;
  const int n_out = has_out ? *e.count : 0;
  const int n_fast = min(n_out, min(e.cap, kMaxGathered)), n8 = min(n_fast, kRowStaged);
  int32_t a[kEpiRows][4];
  uint2 qa8[kEpiRows];
  uint4 qo8[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};  // outputs o .. o + 3, 8 bytes each
  float xc[2] = {0.0f, 0.0f};  // x_c of rows lane / 8 and 4 + lane / 8, column lane % 8
  float4 w4[4];                // wout of the first 4 columns
  if (vec) {
#pragma unroll
    for (int r = 0; r < kEpiRows; r++) {
      const int4 t =
          live && r < rows ? __ldcs(reinterpret_cast<const int4*>(acc + (m0 + r) * e.O + o)) : int4{};
      a[r][0] = t.x;
      a[r][1] = t.y;
      a[r][2] = t.z;
      a[r][3] = t.w;
      qa8[r] = has_out && r < rows ? *reinterpret_cast<const uint2*>(e.qa_c + (m0 + r) * kRowStaged)
                                   : make_uint2(0, 0);
    }
    if (has_out) {
      qo8[0] = *reinterpret_cast<const uint4*>(e.qout + os * kRowStaged);
      qo8[1] = *reinterpret_cast<const uint4*>(e.qout + os * kRowStaged + 16);
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int r = 4 * h + lane / 8;
        xc[h] = r < rows ? e.x_c[(m0 + r) * kRowStaged + lane % 8] : 0.0f;
      }
    }
#pragma unroll
    for (int j = 0; j < 4; j++)
      w4[j] = j < n8 ? *reinterpret_cast<const float4*>(e.wout + j * e.O + os) : make_float4(0, 0, 0, 0);
  }
  // Outlier columns past kRowStaged: staged through cols (a uniform branch: n_out is the block's).
  if (n_fast > kRowStaged) {
    for (int idx = threadIdx.x; idx < kEpiRows * (n_fast - kRowStaged); idx += blockDim.x) {
      const int rr = idx / (n_fast - kRowStaged), jj = kRowStaged + idx % (n_fast - kRowStaged);
      const int64_t c = e.cols[jj];
      s_qa[rr][jj] = rr < rows ? e.qa[(m0 + rr) * e.K + c] : 0;
      s_x[rr][jj] = rr < rows ? load_kind(e.x, (m0 + rr) * e.K + c, x_kind) : 0.0f;
    }
    __syncthreads();
  }
  if (!vec) {
    if (!live) return;
    for (int r = 0; r < rows; r++)
      for (int64_t k = o; k < min(o + 4, e.O); k++)
        store_kind(e.out, (m0 + r) * e.O + k, out_kind,
                   finish(acc[(m0 + r) * e.O + k], m0 + r, k, e, n_out, x_kind, bias_kind));
    return;
  }
  // acc' = acc − Σ_j qa[m, c_j] · qb[o, c_j] (exact integers: any order)
  if (has_out) {
    const uint32_t qo[4][2] = {
        {qo8[0].x, qo8[0].y}, {qo8[0].z, qo8[0].w}, {qo8[1].x, qo8[1].y}, {qo8[1].z, qo8[1].w}};
#pragma unroll
    for (int r = 0; r < kEpiRows; r++)
#pragma unroll
      for (int k = 0; k < 4; k++)
        a[r][k] -= __dp4a((int)qa8[r].y, (int)qo[k][1], __dp4a((int)qa8[r].x, (int)qo[k][0], 0));
  }
  for (int j = kRowStaged; j < n_out; j++) {  // the rest: staged rows, weights read in place
    const int64_t c = e.cols[j];
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const int32_t qb = e.qb[(os + k) * e.K + c];
#pragma unroll
      for (int r = 0; r < kEpiRows; r++)  // constant bounds keep a[][] in registers
        if (r < rows) a[r][k] -= (j < n_fast ? s_qa[r][j] : (int32_t)e.qa[(m0 + r) * e.K + c]) * qb;
    }
  }
  const float4 sb4 = *reinterpret_cast<const float4*>(e.sb + os);
  const float sb[4] = {sb4.x, sb4.y, sb4.z, sb4.w};
  float bias[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (e.bias)
#pragma unroll
    for (int k = 0; k < 4; k++) bias[k] = load_kind(e.bias, os + k, bias_kind);
  float v[kEpiRows][4];
#pragma unroll
  for (int r = 0; r < kEpiRows; r++) {
    const float sa = r < rows ? e.sa[m0 + r] : 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
      v[r][k] = __fmul_rn(__fmul_rn((float)a[r][k], __fmul_rn(sa, sb[k])), kInv127Sq);
      if (e.bias) v[r][k] = __fadd_rn(v[r][k], bias[k]);
    }
  }
  // v = fma(x[m, c_j], w[j, o], v) in the order of j, as the CPU does; x of the first 8 columns from the
  // lanes holding x_c
  auto add_column = [&](int j, const float4& w) {
#pragma unroll
    for (int r = 0; r < kEpiRows; r++) {
      const float xv = __shfl_sync(0xffffffffu, xc[r / 4], (r % 4) * 8 + j);
      v[r][0] = fmaf(xv, w.x, v[r][0]);
      v[r][1] = fmaf(xv, w.y, v[r][1]);
      v[r][2] = fmaf(xv, w.z, v[r][2]);
      v[r][3] = fmaf(xv, w.w, v[r][3]);
    }
  };
#pragma unroll
  for (int j = 0; j < 4; j++)
    if (j < n8) add_column(j, w4[j]);
  for (int j = 4; j < n8; j++) add_column(j, *reinterpret_cast<const float4*>(e.wout + j * e.O + os));
  for (int j = kRowStaged; j < n_fast; j++) {
    const float4 w = *reinterpret_cast<const float4*>(e.wout + j * e.O + os);
#pragma unroll
    for (int r = 0; r < kEpiRows; r++) {
      v[r][0] = fmaf(s_x[r][j], w.x, v[r][0]);
      v[r][1] = fmaf(s_x[r][j], w.y, v[r][1]);
      v[r][2] = fmaf(s_x[r][j], w.z, v[r][2]);
      v[r][3] = fmaf(s_x[r][j], w.w, v[r][3]);
    }
  }
  for (int j = n_fast; j < n_out; j++) {
    const int64_t c = e.cols[j];
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const float w = __fmul_rn(__fmul_rn((float)e.qb[(os + k) * e.K + c], sb[k]), kInv127);
#pragma unroll
      for (int r = 0; r < kEpiRows; r++)
        if (r < rows) v[r][k] = fmaf(load_kind(e.x, (m0 + r) * e.K + c, x_kind), w, v[r][k]);
    }
  }
  if (!live) return;
#pragma unroll
  for (int r = 0; r < kEpiRows; r++) {
    if (r >= rows) break;
    const int64_t i = (m0 + r) * e.O + o;
    if (out_kind == 1) {
      __nv_bfloat162 p0 = __floats2bfloat162_rn(v[r][0], v[r][1]),
                     p1 = __floats2bfloat162_rn(v[r][2], v[r][3]);
      __stcs(reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(e.out) + i),
             make_uint2(*reinterpret_cast<uint32_t*>(&p0), *reinterpret_cast<uint32_t*>(&p1)));
    } else if (out_kind == 0) {
      __stcs(reinterpret_cast<float4*>(static_cast<float*>(e.out) + i),
             make_float4(v[r][0], v[r][1], v[r][2], v[r][3]));
    } else {
#pragma unroll
      for (int k = 0; k < 4; k++) store_kind(e.out, i + k, out_kind, v[r][k]);
    }
  }
}

// One warp per output column o, rows [m0, m0 + ROWS): int32 dot products with __dp4a (16-byte loads when
// K % 16 == 0), a warp sum, then finish().
template <int ROWS>
__global__ void int8_gemv_kernel(const Int8Epilogue e, int64_t m0, int x_kind, int bias_kind, int out_kind) {
  const int64_t o = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (o >= e.O) return;
  const int8_t* w = e.qb + o * e.K;
  int32_t acc[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; r++) acc[r] = 0;
  if (e.K % 16 == 0) {
    const int4* wv = reinterpret_cast<const int4*>(w);
    for (int64_t k = lane; k < e.K / 16; k += 32) {
      const int4 b = __ldcs(wv + k);
#pragma unroll
      for (int r = 0; r < ROWS; r++) {
        const int4 a = __ldg(reinterpret_cast<const int4*>(e.qa + (m0 + r) * e.K) + k);
        acc[r] = __dp4a(a.x, b.x, acc[r]);
        acc[r] = __dp4a(a.y, b.y, acc[r]);
        acc[r] = __dp4a(a.z, b.z, acc[r]);
        acc[r] = __dp4a(a.w, b.w, acc[r]);
      }
    }
  } else {
    for (int64_t k = lane; k < e.K; k += 32) {
      const int b = w[k];
#pragma unroll
      for (int r = 0; r < ROWS; r++) acc[r] += (int32_t)e.qa[(m0 + r) * e.K + k] * b;
    }
  }
  const int n_out = e.count ? *e.count : 0;
#pragma unroll
  for (int r = 0; r < ROWS; r++) {
    int32_t s = acc[r];
    for (int d = 16; d > 0; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
    if (lane == 0)
      store_kind(e.out, (m0 + r) * e.O + o, out_kind, finish(s, m0 + r, o, e, n_out, x_kind, bias_kind));
  }
}

// int8_gather_columns_cuda: items [0, N·np) are the rows' (xg, qag), the rest the weights' (wq8, wqf); j is
// the fastest index, so the stores are contiguous.
__global__ void gather_columns_kernel(const Int8Epilogue e, int64_t n, int64_t np, void* __restrict__ xg,
                                      int8_t* __restrict__ qag, int8_t* __restrict__ wq8,
                                      void* __restrict__ wqf, int x_kind, int g_kind) {
  const int64_t rows_items = e.N * np, total = rows_items + e.O * np;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const bool row = i < rows_items;
    const int64_t k = row ? i : i - rows_items, r = k / np, j = k - r * np;
    const int64_t c = j < n ? e.cols[j] : 0;
    if (row) {
      store_kind(xg, k, g_kind, j < n ? load_kind(e.x, r * e.K + c, x_kind) : 0.0f);
      qag[k] = j < n ? e.qa[r * e.K + c] : 0;
    } else {
      const int8_t q = j < n ? e.qb[r * e.K + c] : 0;
      wq8[k] = q;
      store_kind(wqf, k, g_kind, (float)q);
    }
  }
}

__global__ void epilogue_dense_kernel(const int32_t* __restrict__ acc, const int32_t* __restrict__ corr,
                                      const float* __restrict__ fsum, const Int8Epilogue e, int bias_kind,
                                      int out_kind) {
  const int64_t total = e.N * e.O;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t m = i / e.O, o = i - m * e.O;
    const float sb = e.sb[o];
    float v = __fmul_rn(__fmul_rn((float)(acc[i] - corr[i]), __fmul_rn(e.sa[m], sb)), kInv127Sq);
    if (e.bias) v = __fadd_rn(v, load_kind(e.bias, o, bias_kind));
    store_kind(e.out, i, out_kind, fmaf(fsum[i], __fmul_rn(sb, kInv127), v));
  }
}

__global__ void dequant_rows_kernel(const int8_t* __restrict__ q, const float* __restrict__ scale, int64_t r0,
                                    int64_t rows, int64_t cols, void* out, int out_kind) {
  const int64_t n = rows * cols;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = r0 + i / cols;
    store_kind(out, i, out_kind, __fmul_rn(__fmul_rn((float)q[r0 * cols + i], scale[r]), kInv127));
  }
}

}  // namespace

void int8_dequantize_rows_cuda_raw(const int8_t* q, const float* scale, int64_t r0, int64_t rows,
                                   int64_t cols, DType out_dtype, void* out, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const int ok = float_kind(out_dtype, "int8_dequantize_rows_cuda");
  dequant_rows_kernel<<<grid_blocks(rows * cols, kThreads), kThreads, 0, stream>>>(q, scale, r0, rows, cols,
                                                                                   out, ok);
  check_launch("dequant_rows_kernel");
}

void int8_quant_rows_cuda(const void* x, DType dtype, int64_t rows, int64_t cols, float threshold,
                          bool round_f16, int8_t* q, float* scale, uint8_t* col_flags, cudaStream_t stream,
                          BnbBackend scale_rule) {
  const bool cuda_scale = scale_rule == BnbBackend::Cuda;
  if (rows <= 0 || cols <= 0) return;
  if (rows > 0x7fffffff) throw_error(ErrorKind::Usage, "int8_quant_rows_cuda: too many rows (", rows, ")");
  if (threshold > 0.0f && !col_flags)
    throw_error(ErrorKind::Usage, "int8_quant_rows_cuda: a threshold needs the column flags buffer");
  const bool vec = dtype != DType::F32 && cols % 8 == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0 &&
                   (reinterpret_cast<uintptr_t>(q) & 7) == 0;
  if (vec && round_f16 && cols <= kWarpMaxCols) {
    const int wpr = cols <= kWarpCols ? 1 : cols <= 2 * kWarpCols ? 2 : 4;  // warps per row
    const int per_block = kWarpThreads / 32 / wpr;                          // rows per block
    const unsigned blocks = (unsigned)((rows + per_block - 1) / per_block);
    QT_QUANT_DISPATCH(dtype, "int8_quant_rows_cuda", T, {
      quant_rows_warp_kernel<T><<<blocks, kWarpThreads, 0, stream>>>(
          static_cast<const T*>(x), rows, cols, threshold, wpr, q, scale, col_flags, cuda_scale);
    });
    check_launch("quant_rows_warp_kernel");
    return;
  }
  QT_QUANT_DISPATCH(dtype, "int8_quant_rows_cuda", T, {
    quant_rows_kernel<T><<<(int)rows, kThreads, 0, stream>>>(static_cast<const T*>(x), cols, threshold,
                                                             round_f16, q, scale, col_flags, vec, cuda_scale);
  });
  check_launch("quant_rows_kernel");
}

void int8_outliers_cuda(const uint8_t* col_flags, const Int8Epilogue& e, int32_t* cols, int32_t* count,
                        float* wout, int8_t* qout, int cap, int8_t* qa_c, float* x_c, uint32_t* clear_done,
                        int max_blocks, cudaStream_t stream) {
  if (cap < 0 || cap > kMaxGathered)
    throw_error(ErrorKind::Usage, "int8_outliers_cuda: cap must be 0 to ", kMaxGathered, ", got ", cap);
  if (e.K <= 0) return;
  const int xk = float_kind(e.x_dtype, "int8_outliers_cuda (x)");
  const bool vec16 = (reinterpret_cast<uintptr_t>(col_flags) & 15) == 0;
  const int64_t work = std::max(cap > 0 ? e.O : 0, qa_c ? e.N * kRowStaged : 0);
  // Capped: fewer, larger blocks (the listing takes up to 1024 threads).
  const int threads = max_blocks > 0 ? 1024 : kThreads;
  int blocks = grid_blocks(std::max<int64_t>(work, 1), threads);
  if (max_blocks > 0) blocks = std::min(blocks, max_blocks);
  outliers_kernel<<<blocks, threads, 0, stream>>>(col_flags, e, xk, vec16, cols, count, wout, qout, cap, qa_c,
                                                  x_c, clear_done);
  check_launch("outliers_kernel");
}

void int8_epilogue_cuda(const int32_t* acc, const Int8Epilogue& e, cudaStream_t stream) {
  if (e.N <= 0 || e.O <= 0) return;
  const int xk = float_kind(e.x_dtype, "int8_epilogue_cuda (x)"), ok = float_kind(e.out_dtype, "int8 (out)");
  const int bk = e.bias ? float_kind(e.bias_dtype, "int8_epilogue_cuda (bias)") : 0;
  if (e.cap > kMaxGathered)
    throw_error(ErrorKind::Usage, "int8_epilogue_cuda: at most ", kMaxGathered, " gathered columns, got ",
                e.cap);
  if (e.count && (!e.qa_c || !e.x_c || !e.qout || !e.wout || e.cap < kRowStaged))
    throw_error(ErrorKind::Usage,
                "int8_epilogue_cuda: outlier columns need qa_c, x_c, qout and wout for at least ", kRowStaged,
                " columns (int8_outliers_cuda)");
  auto aligned = [](const void* p, uintptr_t n) { return (reinterpret_cast<uintptr_t>(p) & (n - 1)) == 0; };
  const bool vec = e.O % 4 == 0 && aligned(acc, 16) && aligned(e.sb, 16) && aligned(e.wout, 16) &&
                   aligned(e.qout, 16) && aligned(e.qa_c, 8) && aligned(e.out, ok == 0 ? 16 : 8);
  const int64_t gx = (e.O + 4 * kEpiThreads - 1) / (4 * kEpiThreads);
  if (gx > 0x7fffffff) throw_error(ErrorKind::Usage, "int8_epilogue_cuda: too many outputs (", e.O, ")");
  const int64_t max_rows = (int64_t)65535 * kEpiRows;  // grid.y limit: launch row slices beyond it
  const size_t xs = dtype_nbytes(e.x_dtype, 1), os = dtype_nbytes(e.out_dtype, 1);
  for (int64_t m0 = 0; m0 < e.N; m0 += max_rows) {
    Int8Epilogue s = e;
    s.N = std::min(max_rows, e.N - m0);
    s.sa = e.sa + m0;
    s.qa = e.qa + m0 * e.K;
    s.x = static_cast<const char*>(e.x) + m0 * e.K * xs;
    if (e.qa_c) {
      s.qa_c = e.qa_c + m0 * kRowStaged;
      s.x_c = e.x_c + m0 * kRowStaged;
    }
    s.out = static_cast<char*>(e.out) + m0 * e.O * os;
    const dim3 grid((unsigned)gx, (unsigned)((s.N + kEpiRows - 1) / kEpiRows));
    if (e.count)
      epilogue_kernel<true><<<grid, kEpiThreads, 0, stream>>>(acc + m0 * e.O, s, xk, bk, ok, vec);
    else
      epilogue_kernel<false><<<grid, kEpiThreads, 0, stream>>>(acc + m0 * e.O, s, xk, bk, ok, vec);
  }
  check_launch("epilogue_kernel");
}

void int8_gemv_cuda(const Int8Epilogue& e, int64_t m0, int rows, cudaStream_t stream) {
  if (rows < 1 || rows > 4) throw_error(ErrorKind::Usage, "int8_gemv_cuda: rows must be 1 to 4, got ", rows);
  if (e.O <= 0) return;
  const int xk = float_kind(e.x_dtype, "int8_gemv_cuda (x)"), ok = float_kind(e.out_dtype, "int8 (out)");
  const int bk = e.bias ? float_kind(e.bias_dtype, "int8_gemv_cuda (bias)") : 0;
  const int blocks = (int)((e.O * 32 + kThreads - 1) / kThreads);
  switch (rows) {
    case 1:
      int8_gemv_kernel<1><<<blocks, kThreads, 0, stream>>>(e, m0, xk, bk, ok);
      break;
    case 2:
      int8_gemv_kernel<2><<<blocks, kThreads, 0, stream>>>(e, m0, xk, bk, ok);
      break;
    case 3:
      int8_gemv_kernel<3><<<blocks, kThreads, 0, stream>>>(e, m0, xk, bk, ok);
      break;
    default:
      int8_gemv_kernel<4><<<blocks, kThreads, 0, stream>>>(e, m0, xk, bk, ok);
  }
  check_launch("int8_gemv_kernel");
}

void int8_gather_columns_cuda(const Int8Epilogue& e, int64_t n, int64_t np, void* xg, DType xg_dtype,
                              int8_t* qag, int8_t* wq8, void* wqf, cudaStream_t stream) {
  if (n < 0 || np < n) throw_error(ErrorKind::Usage, "int8_gather_columns_cuda: n ", n, ", np ", np);
  const int xk = float_kind(e.x_dtype, "int8_gather_columns_cuda (x)"),
            gk = float_kind(xg_dtype, "int8_gather_columns_cuda (xg)");
  const int64_t total = (e.N + e.O) * np;
  if (total <= 0) return;
  gather_columns_kernel<<<grid_blocks(total, kThreads), kThreads, 0, stream>>>(e, n, np, xg, qag, wq8, wqf,
                                                                               xk, gk);
  check_launch("gather_columns_kernel");
}

void int8_epilogue_dense_cuda(const int32_t* acc, const int32_t* corr, const float* fsum,
                              const Int8Epilogue& e, cudaStream_t stream) {
  if (e.N <= 0 || e.O <= 0) return;
  const int ok = float_kind(e.out_dtype, "int8 (out)");
  const int bk = e.bias ? float_kind(e.bias_dtype, "int8_epilogue_dense_cuda (bias)") : 0;
  epilogue_dense_kernel<<<grid_blocks(e.N * e.O, kThreads), kThreads, 0, stream>>>(acc, corr, fsum, e, bk,
                                                                                   ok);
  check_launch("epilogue_dense_kernel");
}

}  // namespace qtune
