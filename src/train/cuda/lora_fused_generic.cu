// The fused LoRA kernels for shapes off the 16-byte path of lora_fused.cu (a feature count that is not a
// multiple of 8, a rank that is not, unaligned storage): the same fragment layouts and mask, with each lane
// loading its eight elements one by one. Small models only; the 8B-class shapes take the cp.async kernels.
#include <algorithm>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/mma_util.cuh"
#include "train/cuda/lora_fused_util.cuh"

namespace qtune {
namespace lora_kernels {
namespace {

using cuda::mma_bf16_16816;

// The 8 bf16 of row `row`, columns k..k+7 of p [rows, K], as raw bits: zero outside, dropped ones zeroed.
__device__ __forceinline__ uint4 load8(const bf16* p, int64_t rows, int64_t K, int64_t row, int64_t k,
                                       const Mask& m) {
  uint32_t w[4] = {0u, 0u, 0u, 0u};
  if (row < rows) {
    const uint16_t* s = reinterpret_cast<const uint16_t*>(p);
    const int64_t i = row * K + k;
    for (int j = 0; j < 8 && k + j < K; j++) {
      uint32_t b = s[i + j];
      if (m.on && !keeps(m, (uint64_t)(i + j))) b = 0;
      w[j / 2] |= b << (16 * (j & 1));
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// out[N, r] = scale · (m ⊙ x)·wᵀ, as lora_down_async_kernel (lora_fused.cu) with direct loads: lane (g, c)
// loads x[row g (+8)][k0 + 8c .. +8] and w[col g][same], its eight k being the fragment's k 2c, 2c+1, 2c+8,
// 2c+9 of two mma steps (the same order on both operands).
template <int MT, int RT>
__global__ void __launch_bounds__(kWarps * 32)
    lora_down_generic_kernel(bf16* out, float* partial, unsigned* counters, const bf16* x, const bf16* w,
                             int64_t N, int64_t K, int r, int64_t k_split, float scale, Mask m) {
  constexpr int ROWS = 16 * MT, COLS = 8 * RT, T = ROWS * COLS, E = (T + 255) / 256;
  __shared__ float red[kWarps][T];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int64_t row0 = (int64_t)blockIdx.x * ROWS;
  const int col0 = blockIdx.z * COLS;
  const int64_t kb = (int64_t)blockIdx.y * k_split, ke = min(K, kb + k_split);
  const Mask none{0, 0, 0, 0, false};
  float acc[MT][RT][4] = {};
  for (int64_t k0 = kb + warp * 32; k0 < ke; k0 += kWarps * 32) {
    const int64_t k = k0 + 8 * c;
    uint4 xv[MT][2], wv[RT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
      xv[mt][0] = load8(x, N, K, row0 + 16 * mt + g, k, m);
      xv[mt][1] = load8(x, N, K, row0 + 16 * mt + 8 + g, k, m);
    }
#pragma unroll
    for (int j = 0; j < RT; j++) wv[j] = load8(w, r, K, col0 + 8 * j + g, k, none);
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int j = 0; j < RT; j++) mma_k16(acc[mt][j], xv[mt][0], xv[mt][1], wv[j]);
  }
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int j = 0; j < RT; j++)
      store_fragment(red[warp] + (16 * mt + g) * COLS + 8 * j + 2 * c, acc[mt][j], COLS);
  __syncthreads();
  float v[E];
  sum_warp_tiles<E, T>(&red[0][0], v);
  const int64_t tile = (int64_t)blockIdx.z * gridDim.x + blockIdx.x;
  if (!finish_splits<E, T>(v, partial, counters, tile, blockIdx.y, gridDim.y)) return;
#pragma unroll
  for (int q = 0; q < E; q++) {
    const int e = threadIdx.x + 256 * q;
    const int64_t row = row0 + e / COLS;
    const int col = col0 + e % COLS;
    if (e < T && row < N && col < r) out[row * r + col] = __float2bfloat16_rn(scale * v[q]);
  }
}

// g += scale · dᵀ·(m ⊙ x), as lora_down_grad_async_kernel (lora_fused.cu) with direct loads.
__global__ void __launch_bounds__(kWarps * 32)
    lora_down_grad_generic_kernel(float* gout, float* partial, unsigned* counters, const bf16* d,
                                  const bf16* x, int64_t N, int64_t K, int r, int64_t t_split, float scale,
                                  Mask m, bool g_kr) {
  constexpr int T = 16 * 64, E = T / 256;
  __shared__ float red[kWarps][T];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int64_t f0 = (int64_t)blockIdx.x * 64;
  const int rr0 = blockIdx.z * 16;
  const int64_t tb = (int64_t)blockIdx.y * t_split, te = min(N, tb + t_split);
  const uint16_t* d16 = reinterpret_cast<const uint16_t*>(d);
  float acc[8][4] = {};
  for (int64_t t0 = tb + warp * 16; t0 < te; t0 += kWarps * 16) {
    const int64_t ta = t0 + 2 * c;
    const uint4 l0 = load8(x, N, K, ta, f0 + 8 * g, m), l1 = load8(x, N, K, ta + 1, f0 + 8 * g, m);
    const uint4 l2 = load8(x, N, K, ta + 8, f0 + 8 * g, m), l3 = load8(x, N, K, ta + 9, f0 + 8 * g, m);
    auto dv = [&](int64_t t, int rr) -> uint32_t {
      return (t < N && rr < r) ? (uint32_t)__ldg(d16 + t * r + rr) : 0u;
    };
    const uint32_t a[4] = {dv(ta, rr0 + g) | dv(ta + 1, rr0 + g) << 16,
                           dv(ta, rr0 + g + 8) | dv(ta + 1, rr0 + g + 8) << 16,
                           dv(ta + 8, rr0 + g) | dv(ta + 9, rr0 + g) << 16,
                           dv(ta + 8, rr0 + g + 8) | dv(ta + 9, rr0 + g + 8) << 16};
    const uint32_t w0[4] = {l0.x, l0.y, l0.z, l0.w}, w1[4] = {l1.x, l1.y, l1.z, l1.w};
    const uint32_t w2[4] = {l2.x, l2.y, l2.z, l2.w}, w3[4] = {l3.x, l3.y, l3.z, l3.w};
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const uint32_t sel = (i & 1) ? 0x7632 : 0x5410;  // (lo, hi) = feature i of the two tokens
      mma_bf16_16816(acc[i], a, __byte_perm(w0[i / 2], w1[i / 2], sel),
                     __byte_perm(w2[i / 2], w3[i / 2], sel));
    }
  }
#pragma unroll
  for (int i = 0; i < 8; i++)  // acc[i]: (rank g, feature 16c + i), (g, 16c + 8 + i), (g + 8, …), (g + 8, …)
    store_fragment_t(red[warp] + g * 64 + 16 * c + i, acc[i], 64);
  __syncthreads();
  float v[E];
  sum_warp_tiles<E, T>(&red[0][0], v);
  const int64_t tile = (int64_t)blockIdx.z * gridDim.x + blockIdx.x;
  if (!finish_splits<E, T>(v, partial, counters, tile, blockIdx.y, gridDim.y)) return;
#pragma unroll
  for (int q = 0; q < E; q++) {
    const int e = threadIdx.x + 256 * q, rank = rr0 + e / 64;
    const int64_t f = f0 + e % 64;
    if (rank < r && f < K) gout[g_kr ? f * r + rank : rank * K + f] += scale * v[q];
  }
}

// Splits of a reduction of `steps` steps over `tiles` tiles: two blocks per SM, each warp at least two steps.
int64_t generic_splits(int64_t tiles, int64_t steps) {
  const int64_t want = (2 * cuda::context().num_sms + tiles - 1) / tiles;
  return std::max<int64_t>(1, std::min(want, steps / (2 * kWarps)));
}

template <int MT, int RT>
void launch_down(Tensor& out, const Tensor& x, const Tensor& w, float scale, const Mask& m) {
  const int64_t N = x.size(0), K = x.size(1);
  const int r = (int)w.size(0);
  constexpr int ROWS = 16 * MT, COLS = 8 * RT;
  const int64_t row_tiles = (N + ROWS - 1) / ROWS, col_tiles = (r + COLS - 1) / COLS, chunks = (K + 31) / 32;
  int64_t splits = generic_splits(row_tiles * col_tiles, chunks);
  const int64_t k_split = (chunks + splits - 1) / splits * 32;
  splits = (K + k_split - 1) / k_split;
  Tensor partial;
  if (splits > 1)
    partial = Tensor::empty({row_tiles * col_tiles * splits * ROWS * COLS}, DType::F32, Device::CUDA);
  dim3 grid((unsigned)row_tiles, (unsigned)splits, (unsigned)col_tiles);
  lora_down_generic_kernel<MT, RT><<<grid, kWarps * 32, 0, cuda::stream()>>>(
      out.data<bf16>(), splits > 1 ? split_partials(row_tiles * col_tiles * splits * ROWS * COLS) : nullptr,
      splits > 1 ? split_counters(row_tiles * col_tiles) : nullptr, x.data<bf16>(), w.data<bf16>(), N, K, r,
      k_split, scale, m);
  QT_CUDA_CHECK_LAUNCH("lora_down_generic_kernel");
}

}  // namespace

void lora_down_generic(Tensor& out, const Tensor& x, const Tensor& w, float scale, const Mask& m) {
  const int64_t r = w.size(0);
  if (r <= 8)
    launch_down<2, 1>(out, x, w, scale, m);
  else if (r <= 16)
    launch_down<2, 2>(out, x, w, scale, m);
  else
    launch_down<1, 8>(out, x, w, scale, m);
}

void lora_down_grad_generic(Tensor& g, const Tensor& d, const Tensor& x, float scale, const Mask& m,
                            bool g_kr) {
  const int64_t N = x.size(0), K = x.size(1);
  const int r = (int)d.size(1);
  const int64_t f_tiles = (K + 63) / 64, r_tiles = (r + 15) / 16, steps = (N + 15) / 16;
  int64_t splits = generic_splits(f_tiles * r_tiles, steps);
  const int64_t t_split = (steps + splits - 1) / splits * 16;
  splits = (N + t_split - 1) / t_split;
  dim3 grid((unsigned)f_tiles, (unsigned)splits, (unsigned)r_tiles);
  lora_down_grad_generic_kernel<<<grid, kWarps * 32, 0, cuda::stream()>>>(
      g.data<float>(), splits > 1 ? split_partials(f_tiles * r_tiles * splits * 16 * 64) : nullptr,
      splits > 1 ? split_counters(f_tiles * r_tiles) : nullptr, d.data<bf16>(), x.data<bf16>(), N, K, r,
      t_split, scale, m, g_kr);
  QT_CUDA_CHECK_LAUNCH("lora_down_grad_generic_kernel");
}

}  // namespace lora_kernels
}  // namespace qtune
