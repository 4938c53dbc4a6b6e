// The CUDA kernels of train/lora_fused.h. Every LoRA product is skinny (the rank r on one side), so each is
// bound by reading its big operand (x or dy [N, K]) or by updating dx. The kernels read it once, apply the
// dropout mask in registers (one splitmix64 per four elements; a dropped bf16 is zeroed, the 1/(1 − p) scale
// goes onto the f32 result) and multiply on the tensor cores (mma m16n8k16, f32 accumulation). A product's
// reduction order and output columns are free to permute inside a fragment, so each lane's fragment registers
// are whole 16-byte rows of the operand tile: no ldmatrix for x (fragment layouts in ops/cuda/mma_util.cuh).
//   lora_down       8 warps of a block share 16·MT rows and split the block's K range; each warp streams its
//                   32-wide k chunks through a private ring of cp.async stages (several chunks in flight
//                   without holding them in registers); blocks split K further to fill one wave of the GPU,
//                   and the last block of a tile to finish adds the splits in their order (deterministic).
//   lora_down_grad  the same over tokens: 8 warps share 64 features and 16 ranks.
//   lora_up_dx      a warp per 16 rows × 64 features; dx is read before the products so the loads overlap
//                   them.
// Shapes off the 16-byte path run the element-load kernels of lora_fused_generic.cu.
#include <cuda_bf16.h>

#include <algorithm>
#include <type_traits>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/device_util.cuh"
#include "ops/cuda/mma_util.cuh"
#include "train/cuda/lora_fused_cuda.h"
#include "train/cuda/lora_fused_util.cuh"

namespace qtune {
using namespace lora_kernels;

namespace {

using cuda::mma_bf16_16816;
constexpr int kStages = 4;  // cp.async ring depth per warp

// out[N, r] = scale · (m ⊙ x)[N, K] · w[r, K]ᵀ, K % 8 == 0. Block: rows [16·MT·bx, +16·MT), output columns
// [8·RT·bz, +8·RT), k [by·k_split, +k_split); warp w takes the block's 32-wide chunks w, w + 8, … A stage
// holds the chunk's x rows then its w rows (64-byte rows). Lane (g, c) reads x row g (+8) and w row g at k
// 8c..8c+7: its eight k are the fragment's k 2c, 2c+1, 2c+8, 2c+9 of two mma steps (the same order on both
// operands).
template <int MT, int RT>
__global__ void __launch_bounds__(kWarps * 32, 2)
    lora_down_async_kernel(bf16* out, float* partial, unsigned* counters, const bf16* x, const bf16* w,
                           int64_t N, int64_t K, int r, int64_t k_split, float scale, Mask m) {
  constexpr int ROWS = 16 * MT, COLS = 8 * RT, T = ROWS * COLS, E = (T + 255) / 256;
  constexpr int STAGE = (ROWS + COLS) * 32;  // bf16 elements
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  bf16* ring = reinterpret_cast<bf16*>(smem) + warp * kStages * STAGE;
  const int64_t row0 = (int64_t)blockIdx.x * ROWS;
  const int col0 = blockIdx.z * COLS;
  const int64_t kb = (int64_t)blockIdx.y * k_split, ke = min(K, kb + k_split);
  const int64_t chunks = (ke - kb + 31) / 32;
  const int mine = chunks > warp ? (int)((chunks - warp + kWarps - 1) / kWarps) : 0;
  auto issue = [&](int i) {  // this warp's chunk i into stage i % kStages
    bf16* st = ring + (i % kStages) * STAGE;
    const int64_t k0 = kb + (int64_t)(warp + i * kWarps) * 32;
#pragma unroll
    for (int s = lane; s < (ROWS + COLS) * 4; s += 32) {  // 16-byte segment s: row s / 4, k 8·(s % 4)
      const int row = s >> 2;
      const int64_t k = k0 + (s & 3) * 8;
      const bool is_x = row < ROWS;
      const int64_t gr = is_x ? row0 + row : (int64_t)(col0 + row - ROWS);
      const bool ok = k < K && gr < (is_x ? N : (int64_t)r);
      cuda::cp_async_16(st + s * 8, ok ? (is_x ? x : w) + gr * K + k : x, ok);
    }
  };
  for (int s = 0; s < kStages - 1; s++) {
    if (s < mine) issue(s);
    cuda::cp_async_commit_group();
  }
  float acc[MT][RT][4] = {};
  for (int i = 0; i < mine; i++) {
    cuda::cp_async_wait_group<kStages - 2>();
    __syncwarp();
    const bf16* st = ring + (i % kStages) * STAGE;
    const int64_t k = kb + (int64_t)(warp + i * kWarps) * 32 + 8 * c;
    uint4 xv[MT][2], wv[RT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int row = 16 * mt + 8 * h + g;
        xv[mt][h] = *reinterpret_cast<const uint4*>(st + row * 32 + 8 * c);
        if (m.on) mask8(xv[mt][h], m, (uint64_t)((row0 + row) * K + k));
      }
#pragma unroll
    for (int j = 0; j < RT; j++)
      wv[j] = *reinterpret_cast<const uint4*>(st + (ROWS + 8 * j + g) * 32 + 8 * c);
    __syncwarp();  // every lane has read the stage before it is refilled
    if (i + kStages - 1 < mine) issue(i + kStages - 1);
    cuda::cp_async_commit_group();
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int j = 0; j < RT; j++) mma_k16(acc[mt][j], xv[mt][0], xv[mt][1], wv[j]);
  }
  cuda::cp_async_wait_group<0>();
  __syncthreads();
  float* red = reinterpret_cast<float*>(smem);  // [kWarps][T] over the rings
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int j = 0; j < RT; j++)
      store_fragment(red + warp * T + (16 * mt + g) * COLS + 8 * j + 2 * c, acc[mt][j], COLS);
  __syncthreads();
  float v[E];
  sum_warp_tiles<E, T>(red, v);
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

// g += scale · d[N, r]ᵀ · (m ⊙ x)[N, K] (g [r, K], or [K, r] when g_kr), K % 8 == 0 and r % 8 == 0. Block:
// features [64·bx, +64), ranks [16·bz, +16), tokens [by·t_split, +t_split); warp w takes the block's 16-token
// steps w, w + 8, … The mma's m is the rank (A = dᵀ through ldmatrix.trans), n the feature, k the token. A
// stage holds x [16 tokens][64 features] (the 16-byte segments of row t XOR-swizzled by 2·((t / 2) % 4), so
// the reads below hit distinct banks) and d [16 tokens][16 ranks]. Lane (g, c) reads tokens 2c, 2c+1, 2c+8,
// 2c+9 at features 8g..8g+7: column g of n-tile i is feature 8g + i, and byte permutes pair the two tokens of
// each B register.
__global__ void __launch_bounds__(kWarps * 32, 2)
    lora_down_grad_async_kernel(float* gout, float* partial, unsigned* counters, const bf16* d, const bf16* x,
                                int64_t N, int64_t K, int r, int64_t t_split, float scale, Mask m,
                                bool g_kr) {
  constexpr int T = 16 * 64, E = T / 256, STAGE = 16 * 64 + 16 * 16;
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  bf16* ring = reinterpret_cast<bf16*>(smem) + warp * kStages * STAGE;
  const int64_t f0 = (int64_t)blockIdx.x * 64;
  const int rr0 = blockIdx.z * 16;
  const int64_t tb = (int64_t)blockIdx.y * t_split, te = min(N, tb + t_split);
  const int64_t steps = (te - tb + 15) / 16;
  const int mine = steps > warp ? (int)((steps - warp + kWarps - 1) / kWarps) : 0;
  auto swz = [](int row) { return ((row >> 1) & 3) << 1; };
  auto issue = [&](int i) {
    bf16* st = ring + (i % kStages) * STAGE;
    const int64_t t0 = tb + (int64_t)(warp + i * kWarps) * 16;
#pragma unroll
    for (int s = lane; s < 128; s += 32) {  // x: 16 rows × 8 segments
      const int row = s >> 3, seg = s & 7;
      const int64_t t = t0 + row, f = f0 + seg * 8;
      const bool ok = t < N && f < K;
      cuda::cp_async_16(st + row * 64 + (seg ^ swz(row)) * 8, ok ? x + t * K + f : x, ok);
    }
    const int row = lane >> 1, rr = rr0 + (lane & 1) * 8;  // d: 16 rows × 2 segments
    const bool ok = t0 + row < N && rr < r;
    cuda::cp_async_16(st + 1024 + lane * 8, ok ? d + (t0 + row) * r + rr : d, ok);
  };
  for (int s = 0; s < kStages - 1; s++) {
    if (s < mine) issue(s);
    cuda::cp_async_commit_group();
  }
  float acc[8][4] = {};
  for (int i = 0; i < mine; i++) {
    cuda::cp_async_wait_group<kStages - 2>();
    __syncwarp();
    const bf16* st = ring + (i % kStages) * STAGE;
    const int64_t t0 = tb + (int64_t)(warp + i * kWarps) * 16;
    uint4 l[4];
#pragma unroll
    for (int q = 0; q < 4; q++) {
      const int row = 2 * c + (q & 1) + 8 * (q >> 1);
      l[q] = *reinterpret_cast<const uint4*>(st + row * 64 + (g ^ swz(row)) * 8);
      if (m.on) mask8(l[q], m, (uint64_t)((t0 + row) * K + f0 + 8 * g));
    }
    uint32_t a[4];
    cuda::load_a_trans(a, st + 1024, 16, 0, 0, lane);
    __syncwarp();
    if (i + kStages - 1 < mine) issue(i + kStages - 1);
    cuda::cp_async_commit_group();
    const uint32_t w0[4] = {l[0].x, l[0].y, l[0].z, l[0].w}, w1[4] = {l[1].x, l[1].y, l[1].z, l[1].w};
    const uint32_t w2[4] = {l[2].x, l[2].y, l[2].z, l[2].w}, w3[4] = {l[3].x, l[3].y, l[3].z, l[3].w};
#pragma unroll
    for (int n = 0; n < 8; n++) {
      const uint32_t sel = (n & 1) ? 0x7632 : 0x5410;  // (lo, hi) = feature n of the two tokens
      mma_bf16_16816(acc[n], a, __byte_perm(w0[n / 2], w1[n / 2], sel),
                     __byte_perm(w2[n / 2], w3[n / 2], sel));
    }
  }
  cuda::cp_async_wait_group<0>();
  __syncthreads();
  float* red = reinterpret_cast<float*>(smem);  // [kWarps][T] over the rings
#pragma unroll
  for (int n = 0; n < 8; n++)  // acc[n]: (rank g, feature 16c + n), (g, 16c + 8 + n), (g + 8, …), (g + 8, …)
    store_fragment_t(red + warp * T + g * 64 + 16 * c + n, acc[n], 64);
  __syncthreads();
  float v[E];
  sum_warp_tiles<E, T>(red, v);
  const int64_t tile = (int64_t)blockIdx.z * gridDim.x + blockIdx.x;
  if (!finish_splits<E, T>(v, partial, counters, tile, blockIdx.y, gridDim.y)) return;
#pragma unroll
  for (int q = 0; q < E; q++) {
    const int e = threadIdx.x + 256 * q, rank = rr0 + e / 64;
    const int64_t f = f0 + e % 64;
    if (rank < r && f < K) gout[g_kr ? f * r + rank : rank * K + f] += scale * v[q];
  }
}

// dx[N, K] += keep · m ⊙ (d[N, r] · wt[K, r]ᵀ). Warp: rows [16·MT·bx, +16·MT) × features [f0, +64), the mma's
// k the rank. n-tiles 2q and 2q+1 cover features f0 + 16q + [0, 16): column n of tile 2q is feature
// 4(n/2) + n%2, of tile 2q+1 that + 2, so lane (g, c) holds the four features 16q + 4c .. +3 of its rows: one
// mask hash and one vector read-modify-write of dx each. VEC: K % 4 == 0 and dx aligned for those; the lane's
// dx is read before the products so the loads overlap them. Launched with MT = 1: two row tiles per warp
// (BF16 dx: 164 registers, 3 blocks per SM) measured slower than one (≤ 128 registers, 4 blocks per SM).
template <class TO, bool VEC, int MT>
__global__ void __launch_bounds__(128, sizeof(TO) == 4 ? 0 : 4)
    lora_up_dx_kernel(TO* dx, const bf16* d, const bf16* wt, int64_t N, int64_t K, int r, float keep,
                      Mask m) {
  using V = std::conditional_t<sizeof(TO) == 4, float4, uint2>;  // four elements of dx
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int64_t row0 = (int64_t)blockIdx.x * 16 * MT, f0 = ((int64_t)blockIdx.y * 4 + warp) * 64;
  if (f0 >= K) return;
  V old[MT][2][4];
  if (VEC) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int h = 0; h < 2; h++)
#pragma unroll
        for (int q = 0; q < 4; q++) {
          const int64_t row = row0 + 16 * mt + g + 8 * h, f = f0 + 16 * q + 4 * c;
          if (row < N && f < K) old[mt][h][q] = *reinterpret_cast<const V*>(dx + row * K + f);
        }
  }
  const uint16_t* d16 = reinterpret_cast<const uint16_t*>(d);
  const uint16_t* w16 = reinterpret_cast<const uint16_t*>(wt);
  float acc[MT][8][4] = {};
  for (int k0 = 0; k0 < r; k0 += 16) {
    uint32_t b[8][2];
#pragma unroll
    for (int n = 0; n < 8; n++) {
      const int64_t f = f0 + 16 * (n / 2) + 4 * (g >> 1) + (g & 1) + 2 * (n & 1);
      b[n][0] = pair(w16, K, r, f, k0 + 2 * c);
      b[n][1] = pair(w16, K, r, f, k0 + 2 * c + 8);
    }
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
      const int64_t ra = row0 + 16 * mt + g;
      const uint32_t a[4] = {pair(d16, N, r, ra, k0 + 2 * c), pair(d16, N, r, ra + 8, k0 + 2 * c),
                             pair(d16, N, r, ra, k0 + 2 * c + 8), pair(d16, N, r, ra + 8, k0 + 2 * c + 8)};
#pragma unroll
      for (int n = 0; n < 8; n++) mma_bf16_16816(acc[mt][n], a, b[n][0], b[n][1]);
    }
  }
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int64_t row = row0 + 16 * mt + g + 8 * h;
      if (row >= N) continue;
#pragma unroll
      for (int q = 0; q < 4; q++) {
        const int64_t f = f0 + 16 * q + 4 * c;
        if (f >= K) continue;
        const float(&a0)[4] = acc[mt][2 * q];
        const float(&a1)[4] = acc[mt][2 * q + 1];
        float v[4] = {a0[2 * h], a0[2 * h + 1], a1[2 * h], a1[2 * h + 1]};
        const int64_t i = row * K + f;
        if (VEC) {
          const uint64_t hash = m.on ? lora_mask_mix(m.seed + ((m.e0 + (uint64_t)i) >> 2)) : ~0ull;
#pragma unroll
          for (int j = 0; j < 4; j++) v[j] = ((hash >> (16 * j)) & 0x7FFF) >= m.thr ? v[j] * keep : 0.0f;
          if constexpr (sizeof(TO) == 4) {
            const float4 o = old[mt][h][q];
            *reinterpret_cast<float4*>(dx + i) = make_float4(o.x + v[0], o.y + v[1], o.z + v[2], o.w + v[3]);
          } else {
            uint2 o = old[mt][h][q];
            __nv_bfloat162 lo = *reinterpret_cast<__nv_bfloat162*>(&o.x);
            __nv_bfloat162 hi = *reinterpret_cast<__nv_bfloat162*>(&o.y);
            lo = __floats2bfloat162_rn(__low2float(lo) + v[0], __high2float(lo) + v[1]);
            hi = __floats2bfloat162_rn(__low2float(hi) + v[2], __high2float(hi) + v[3]);
            *reinterpret_cast<uint2*>(dx + i) =
                make_uint2(*reinterpret_cast<uint32_t*>(&lo), *reinterpret_cast<uint32_t*>(&hi));
          }
        } else {
          for (int j = 0; j < 4 && f + j < K; j++) {
            const float u = (!m.on || keeps(m, (uint64_t)(i + j))) ? v[j] * keep : 0.0f;
            if constexpr (sizeof(TO) == 4)
              dx[i + j] += u;
            else
              dx[i + j] = __float2bfloat16_rn(__bfloat162float(dx[i + j]) + u);
          }
        }
      }
    }
}

// out[C, R] = in[R, C]ᵀ in BF16.
template <class T>
__global__ void transpose_kernel(bf16* out, const T* in, int64_t R, int64_t C) {
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < R * C;
       o += (int64_t)gridDim.x * blockDim.x) {
    const int64_t j = o / R, i = o % R;  // out[j, i]
    out[o] = __float2bfloat16_rn(cuda::to_f32(in[i * C + j]));
  }
}

bool aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

void require_bf16(const Tensor& t, const char* op, const char* name) {
  cuda::require_cuda(t, op, name);
  cuda::require_dtype(t, op, name, DType::BF16);
}

// Dynamic shared memory of a cp.async kernel (opted in once) and how many of its blocks fit on the GPU at
// once.
template <class Kernel>
int64_t prepare(Kernel kernel, int smem) {
  int per_sm = 0;
  QT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  // All of the SM's unified L1/shared memory as shared: two blocks of lora_down (2 × 96 KiB) fit only then.
  QT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                     cudaSharedmemCarveoutMaxShared));
  QT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps * 32, smem));
  return std::max(1, per_sm) * (int64_t)cuda::context().num_sms;
}

// Splits of a reduction of `steps` warp steps over `tiles` output tiles: as many as fill one wave of
// `resident` blocks, each warp keeping at least one step.
int64_t wave_splits(int64_t resident, int64_t tiles, int64_t steps) {
  return std::max<int64_t>(1, std::min(resident / tiles, steps / kWarps));
}

template <int MT, int RT>
void launch_down(Tensor& out, const Tensor& x, const Tensor& w, float scale, const Mask& m) {
  const int64_t N = x.size(0), K = x.size(1);
  const int r = (int)w.size(0);
  constexpr int ROWS = 16 * MT, COLS = 8 * RT, SMEM = kWarps * kStages * (ROWS + COLS) * 32 * 2;
  static const int64_t resident = prepare(lora_down_async_kernel<MT, RT>, SMEM);
  const int64_t row_tiles = (N + ROWS - 1) / ROWS, col_tiles = (r + COLS - 1) / COLS, chunks = (K + 31) / 32;
  int64_t splits = wave_splits(resident, row_tiles * col_tiles, chunks);
  const int64_t k_split = (chunks + splits - 1) / splits * 32;
  splits = (K + k_split - 1) / k_split;
  Tensor partial;
  if (splits > 1)
    partial = Tensor::empty({row_tiles * col_tiles * splits * ROWS * COLS}, DType::F32, Device::CUDA);
  dim3 grid((unsigned)row_tiles, (unsigned)splits, (unsigned)col_tiles);
  lora_down_async_kernel<MT, RT><<<grid, kWarps * 32, SMEM, cuda::stream()>>>(
      out.data<bf16>(), splits > 1 ? split_partials(row_tiles * col_tiles * splits * ROWS * COLS) : nullptr,
      splits > 1 ? split_counters(row_tiles * col_tiles) : nullptr, x.data<bf16>(), w.data<bf16>(), N, K, r,
      k_split, scale, m);
  QT_CUDA_CHECK_LAUNCH("lora_down_async_kernel");
}

}  // namespace

namespace lora_kernels {
unsigned* split_counters(int64_t n) {
  static Tensor* buf = nullptr;  // never freed: it outlives the allocator's teardown at exit
  if (!buf || buf->numel() < n) {
    delete buf;
    buf = new Tensor(Tensor::zeros({std::max<int64_t>(n, 4096)}, DType::I32, Device::CUDA));
  }
  return reinterpret_cast<unsigned*>(buf->raw());
}
float* split_partials(int64_t n) {
  static Tensor* buf = nullptr;
  if (!buf || buf->numel() < n) {
    delete buf;
    buf = new Tensor(Tensor::empty({std::max<int64_t>(n, 1 << 20)}, DType::F32, Device::CUDA));
  }
  return buf->data<float>();
}
}  // namespace lora_kernels

void lora_down_cuda(Tensor& out, const Tensor& x, const Tensor& w, float scale, const LoraMask* mask) {
  const char* op = "lora_down";
  require_bf16(out, op, "out");
  require_bf16(x, op, "x");
  require_bf16(w, op, "w");
  const int64_t N = x.size(0), K = x.size(1), r = w.size(0);
  if (N == 0 || r == 0) return;
  if (K == 0) {
    QT_CUDA_CHECK(cudaMemsetAsync(out.raw(), 0, out.nbytes(), cuda::stream()));
    return;
  }
  const Mask m = kernel_mask(mask);
  const float s = scale * (mask ? mask->keep : 1.0f);
  if (K % 8 != 0 || !aligned(x.raw(), 16) || !aligned(w.raw(), 16)) return lora_down_generic(out, x, w, s, m);
  if (r <= 8)
    launch_down<2, 1>(out, x, w, s, m);
  else if (r <= 16)
    launch_down<2, 2>(out, x, w, s, m);
  else if (r <= 32)
    launch_down<2, 4>(out, x, w, s, m);
  else
    launch_down<1, 8>(out, x, w, s, m);
}

void lora_down_grad_cuda(Tensor& g, const Tensor& d, const Tensor& x, float scale, const LoraMask* mask,
                         bool g_kr) {
  const char* op = "lora_down_grad";
  cuda::require_cuda(g, op, "g");
  cuda::require_dtype(g, op, "g", DType::F32);
  require_bf16(d, op, "d");
  require_bf16(x, op, "x");
  const int64_t N = x.size(0), K = x.size(1);
  const int r = (int)d.size(1);
  if (N == 0 || K == 0 || r == 0) return;
  const Mask m = kernel_mask(mask);
  const float s = scale * (mask ? mask->keep : 1.0f);
  if (K % 8 != 0 || r % 8 != 0 || !aligned(x.raw(), 16) || !aligned(d.raw(), 16))
    return lora_down_grad_generic(g, d, x, s, m, g_kr);
  constexpr int SMEM = kWarps * kStages * (16 * 64 + 16 * 16) * 2;
  static const int64_t resident = prepare(lora_down_grad_async_kernel, SMEM);
  const int64_t f_tiles = (K + 63) / 64, r_tiles = (r + 15) / 16, steps = (N + 15) / 16;
  int64_t splits = wave_splits(resident, f_tiles * r_tiles, steps);
  const int64_t t_split = (steps + splits - 1) / splits * 16;
  splits = (N + t_split - 1) / t_split;
  dim3 grid((unsigned)f_tiles, (unsigned)splits, (unsigned)r_tiles);
  lora_down_grad_async_kernel<<<grid, kWarps * 32, SMEM, cuda::stream()>>>(
      g.data<float>(), splits > 1 ? split_partials(f_tiles * r_tiles * splits * 16 * 64) : nullptr,
      splits > 1 ? split_counters(f_tiles * r_tiles) : nullptr, d.data<bf16>(), x.data<bf16>(), N, K, r,
      t_split, s, m, g_kr);
  QT_CUDA_CHECK_LAUNCH("lora_down_grad_async_kernel");
}

void lora_up_dx_cuda(Tensor& dx, const Tensor& d, const Tensor& wt, const LoraMask* mask) {
  const char* op = "lora_up_dx";
  cuda::require_cuda(dx, op, "dx");
  cuda::require_dtype(dx, op, "dx", DType::F32, DType::BF16);
  require_bf16(d, op, "d");
  require_bf16(wt, op, "wt");
  const int64_t N = dx.size(0), K = dx.size(1);
  const int r = (int)d.size(1);
  if (N == 0 || K == 0 || r == 0) return;
  const Mask m = kernel_mask(mask);
  const float keep = mask ? mask->keep : 1.0f;
  const bool f32 = dx.dtype() == DType::F32;
  const bool vec = K % 4 == 0 && aligned(dx.raw(), f32 ? 16 : 8);
  auto launch = [&](auto* out, auto vec_tag) {
    using TO = std::remove_pointer_t<decltype(out)>;
    constexpr int MT = 1;
    dim3 grid((unsigned)((N + 16 * MT - 1) / (16 * MT)), (unsigned)((K + 255) / 256));
    lora_up_dx_kernel<TO, decltype(vec_tag)::value, MT>
        <<<grid, 128, 0, cuda::stream()>>>(out, d.data<bf16>(), wt.data<bf16>(), N, K, r, keep, m);
  };
  if (f32)
    vec ? launch(dx.data<float>(), std::true_type()) : launch(dx.data<float>(), std::false_type());
  else
    vec ? launch(dx.data<bf16>(), std::true_type()) : launch(dx.data<bf16>(), std::false_type());
  QT_CUDA_CHECK_LAUNCH("lora_up_dx_kernel");
}

void transpose_into_cuda(Tensor& out, const Tensor& in) {
  const char* op = "transpose_into";
  require_bf16(out, op, "out");
  cuda::require_cuda(in, op, "in");
  cuda::require_dtype(in, op, "in", DType::F32, DType::BF16);
  const int64_t R = in.size(0), C = in.size(1);
  if (R * C == 0) return;
  const int blocks = (int)std::min<int64_t>((R * C + 255) / 256, 1024);
  if (in.dtype() == DType::F32)
    transpose_kernel<float><<<blocks, 256, 0, cuda::stream()>>>(out.data<bf16>(), in.data<float>(), R, C);
  else
    transpose_kernel<bf16><<<blocks, 256, 0, cuda::stream()>>>(out.data<bf16>(), in.data<bf16>(), R, C);
  QT_CUDA_CHECK_LAUNCH("transpose_kernel");
}

}  // namespace qtune
