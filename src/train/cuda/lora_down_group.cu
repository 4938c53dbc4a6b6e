// lora_down_group on CUDA (train/lora_fused.h): the down products of the LoRA modules that read one input
// (q, k, v on h1; gate, up on h2) in one launch, so x streams from memory once instead of once per module.
//   outs[i][N, r] = keep_i · (m_i ⊙ x)[N, K] · w_i[r, K]ᵀ,   i < G,  r ≤ 16
// lora_down_async_kernel's scheme (lora_fused.cu) with the block's output columns the G modules' ranks side
// by side: 8 warps share the block's rows and split its k range; each warp streams 32-wide k chunks of x and
// of every module's w through a private cp.async ring, masks its x fragment once per module (each module
// keeps the mask it draws alone) and multiplies on the tensor cores; blocks split K to fill one wave and the
// last block of a row tile adds the splits in their order (deterministic).
#include <cuda_bf16.h>

#include <algorithm>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/device_util.cuh"
#include "ops/cuda/mma_util.cuh"
#include "train/cuda/lora_fused_cuda.h"
#include "train/cuda/lora_fused_util.cuh"

namespace qtune {
using namespace lora_kernels;

namespace {

using cuda::mma_bf16_16816;
constexpr int kGroupStages = 3;  // cp.async ring depth per warp: 2 blocks of 96 KiB per SM

struct GroupArgs {
  const bf16* w[kLoraGroupMax];  // [r, K] each
  bf16* out[kLoraGroupMax];      // [N, r] each
  Mask m[kLoraGroupMax];
  float scale[kLoraGroupMax];
};

// Block: rows [16·MT·bx, +16·MT) of every module's output, k [by·k_split, +k_split). A stage holds the
// chunk's x rows, then each module's 8·RT w rows (64-byte rows). Lane (g, c) reads x row g (+8) and w row g
// at k 8c..8c+7 (the fragment's k 2c, 2c+1, 2c+8, 2c+9 of two mma steps, the same order on both operands).
template <int G, int MT, int RT>
__global__ void __launch_bounds__(kWarps * 32, 2)
    lora_down_group_kernel(GroupArgs a, float* partial, unsigned* counters, const bf16* x, int64_t N,
                           int64_t K, int r, int64_t k_split) {
  constexpr int ROWS = 16 * MT, COLS = 8 * RT, WROWS = G * COLS, T = ROWS * WROWS, E = (T + 255) / 256;
  constexpr int STAGE = (ROWS + WROWS) * 32;  // bf16 elements
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  bf16* ring = reinterpret_cast<bf16*>(smem) + warp * kGroupStages * STAGE;
  const int64_t row0 = (int64_t)blockIdx.x * ROWS;
  const int64_t kb = (int64_t)blockIdx.y * k_split, ke = min(K, kb + k_split);
  const int64_t chunks = (ke - kb + 31) / 32;
  const int mine = chunks > warp ? (int)((chunks - warp + kWarps - 1) / kWarps) : 0;
  auto issue = [&](int i) {  // this warp's chunk i into stage i % kGroupStages
    bf16* st = ring + (i % kGroupStages) * STAGE;
    const int64_t k = kb + (int64_t)(warp + i * kWarps) * 32 + (lane & 3) * 8;
#pragma unroll
    for (int it = 0; it < (ROWS + WROWS) / 8; it++) {  // 8 stage rows per pass: x rows, then module by module
      const int row = 8 * it + (lane >> 2);
      const bf16* src;
      bool ok;
      if (8 * it < ROWS) {
        ok = k < K && row0 + row < N;
        src = x + (row0 + row) * K + k;
      } else {
        const int j = 8 * it - ROWS, mod = j / COLS, rr = j % COLS + (lane >> 2);  // mod: known per pass
        ok = k < K && rr < r;
        src = a.w[mod] + (int64_t)rr * K + k;
      }
      cuda::cp_async_16(st + row * 32 + (lane & 3) * 8, ok ? src : x, ok);
    }
  };
  for (int s = 0; s < kGroupStages - 1; s++) {
    if (s < mine) issue(s);
    cuda::cp_async_commit_group();
  }
  float acc[G][MT][RT][4] = {};
  for (int i = 0; i < mine; i++) {
    cuda::cp_async_wait_group<kGroupStages - 2>();
    __syncwarp();
    const bf16* st = ring + (i % kGroupStages) * STAGE;
    const int64_t k = kb + (int64_t)(warp + i * kWarps) * 32 + 8 * c;
    uint4 xv[MT][2], wv[G][RT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int h = 0; h < 2; h++)
        xv[mt][h] = *reinterpret_cast<const uint4*>(st + (16 * mt + 8 * h + g) * 32 + 8 * c);
#pragma unroll
    for (int mod = 0; mod < G; mod++)
#pragma unroll
      for (int j = 0; j < RT; j++)
        wv[mod][j] = *reinterpret_cast<const uint4*>(st + (ROWS + mod * COLS + 8 * j + g) * 32 + 8 * c);
    __syncwarp();  // every lane has read the stage before it is refilled
    if (i + kGroupStages - 1 < mine) issue(i + kGroupStages - 1);
    cuda::cp_async_commit_group();
#pragma unroll
    for (int mod = 0; mod < G; mod++)
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        uint4 xm[2] = {xv[mt][0], xv[mt][1]};
        if (a.m[mod].on) {
          mask8(xm[0], a.m[mod], (uint64_t)((row0 + 16 * mt + g) * K + k));
          mask8(xm[1], a.m[mod], (uint64_t)((row0 + 16 * mt + 8 + g) * K + k));
        }
        const uint32_t a0[4] = {xm[0].x, xm[1].x, xm[0].y, xm[1].y};
        const uint32_t a1[4] = {xm[0].z, xm[1].z, xm[0].w, xm[1].w};
#pragma unroll
        for (int j = 0; j < RT; j++) {
          mma_bf16_16816(acc[mod][mt][j], a0, wv[mod][j].x, wv[mod][j].y);
          mma_bf16_16816(acc[mod][mt][j], a1, wv[mod][j].z, wv[mod][j].w);
        }
      }
  }
  cuda::cp_async_wait_group<0>();
  __syncthreads();
  float* red = reinterpret_cast<float*>(smem);  // [kWarps][T] over the rings: T = [ROWS][G·COLS]
#pragma unroll
  for (int mod = 0; mod < G; mod++)
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int j = 0; j < RT; j++)
        store_fragment(red + warp * T + (16 * mt + g) * WROWS + mod * COLS + 8 * j + 2 * c, acc[mod][mt][j],
                       WROWS);
  __syncthreads();
  float v[E];
  sum_warp_tiles<E, T>(red, v);
  if (!finish_splits<E, T>(v, partial, counters, blockIdx.x, blockIdx.y, gridDim.y)) return;
#pragma unroll
  for (int q = 0; q < E; q++) {
    const int e = threadIdx.x + 256 * q;
    const int64_t row = row0 + e / WROWS;
    const int col = e % WROWS, mod = col / COLS, rr = col % COLS;
    if (e < T && row < N && rr < r) {
      // mod is not a compile-time index here: select from the parameter arrays without local memory
      bf16* out = a.out[0];
      float s = a.scale[0];
#pragma unroll
      for (int mm = 1; mm < G; mm++)
        if (mod == mm) {
          out = a.out[mm];
          s = a.scale[mm];
        }
      out[row * r + rr] = __float2bfloat16_rn(s * v[q]);
    }
  }
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <int G, int MT, int RT>
void launch_group(const GroupArgs& a, const Tensor& x, int r) {
  const int64_t N = x.size(0), K = x.size(1);
  constexpr int ROWS = 16 * MT, SMEM = kWarps * kGroupStages * (ROWS + G * 8 * RT) * 32 * 2;
  static const int64_t resident = [] {
    auto kernel = lora_down_group_kernel<G, MT, RT>;
    int per_sm = 0;
    QT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
    QT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                       cudaSharedmemCarveoutMaxShared));
    QT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps * 32, SMEM));
    return std::max(1, per_sm) * (int64_t)cuda::context().num_sms;
  }();
  const int64_t tiles = (N + ROWS - 1) / ROWS, chunks = (K + 31) / 32;
  int64_t splits = std::max<int64_t>(1, std::min(resident / tiles, chunks / kWarps));
  const int64_t k_split = (chunks + splits - 1) / splits * 32;
  splits = (K + k_split - 1) / k_split;
  constexpr int T = ROWS * G * 8 * RT;
  dim3 grid((unsigned)tiles, (unsigned)splits);
  lora_down_group_kernel<G, MT, RT><<<grid, kWarps * 32, SMEM, cuda::stream()>>>(
      a, splits > 1 ? split_partials(tiles * splits * T) : nullptr,
      splits > 1 ? split_counters(tiles) : nullptr, x.data<bf16>(), N, K, r, k_split);
  QT_CUDA_CHECK_LAUNCH("lora_down_group_kernel");
}

}  // namespace

bool lora_down_group_cuda(Tensor* const* outs, const Tensor& x, const Tensor* const* ws,
                          const LoraMask* const* masks, int n) {
  if (n < 2 || x.dtype() != DType::BF16 || !x.is_cuda()) return false;
  const int64_t N = x.size(0), K = x.size(1);
  const int64_t r = ws[0]->size(0);
  if (N == 0 || K == 0 || K % 8 != 0 || r == 0 || r > 16 || !aligned16(x.raw())) return false;
  GroupArgs a{};
  for (int i = 0; i < n; i++) {
    if (ws[i]->size(0) != r || ws[i]->dtype() != DType::BF16 || outs[i]->dtype() != DType::BF16 ||
        !ws[i]->is_cuda() || !outs[i]->is_cuda() || !aligned16(ws[i]->raw()))
      return false;
    a.w[i] = ws[i]->data<bf16>();
    a.out[i] = outs[i]->data<bf16>();
    a.m[i] = kernel_mask(masks[i]);
    a.scale[i] = masks[i] ? masks[i]->keep : 1.0f;
  }
  if (n == 3)
    r <= 8 ? launch_group<3, 1, 1>(a, x, (int)r) : launch_group<3, 1, 2>(a, x, (int)r);
  else
    r <= 8 ? launch_group<2, 2, 1>(a, x, (int)r) : launch_group<2, 2, 2>(a, x, (int)r);
  return true;
}

}  // namespace qtune
