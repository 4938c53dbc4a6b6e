// Training attention backward on the GPU (ops/attention.h attention_backward), FlashAttention-2 style:
// the T×T probabilities are recomputed tile by tile from q, k and the saved lse, never stored.
//   Δ_t = Σ_d dO·O,  P = exp(q·kᵀ/√D − lse),  dV += Pᵀ·dO,  dP = dO·Vᵀ,  dS = P∘(dP − Δ),
//   dK += dSᵀ·Q/√D,  dQ += dS·K/√D,  dk/dv summed over the query heads of each kv head.
// Gradients accumulate (+=) into dq, dk, dv (BF16/F16/F32). Sums run in f32: straight into F32
// gradients by atomics, otherwise into zeroed f32 scratch that a last kernel adds to the gradient.
// Kernels:
// - prep: Δ and lse·log2(e) per row, laid out [B, Hq, T] so the main kernel reads them contiguously;
// - tensor cores (bf16 q/k/v/dout, D 32/64/96/128): one block per (query head, batch, 64-key block),
//   heaviest key blocks first; 4 warps, warp w owns keys 16w..16w+15 and keeps their dK, dV rows in
//   registers while the block walks the query blocks that see its keys (cp.async, double-buffered Q and
//   dO). Per query block it computes Sᵀ, Pᵀ, dPᵀ (keys × queries) by mma.sync, dV and dK by mma from the
//   register fragments, parks dSᵀ in shared memory and then every warp computes dQ for 16 queries
//   (dS·K) and adds it to the f32 dq by atomics; at the end dK, dV go out by atomics (GQA heads share them);
// - simple (any float dtype, D <= 256): one warp per query row, atomics for dk and dv.
#include <cmath>
#include <cstdint>

#include "core/tensor.h"
#include "ops/cuda/attention_kernels.h"
#include "ops/cuda/attention_train.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"
#include "ops/cuda/mma_util.cuh"

namespace qtune {
namespace cuda {

namespace {

// One warp per row (b, t, h): delta[b, h, t] = Σ_d dout·out, lse2[b, h, t] = lse·log2(e).
template <class TG, class TO>
__global__ void attention_train_bwd_prep(float* __restrict__ delta, float* __restrict__ lse2,
                                         const TG* __restrict__ dout, const TO* __restrict__ out,
                                         const float* __restrict__ lse, int B, int T, int Hq, int D) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;  // (b·T + t)·Hq + h
  if (row >= (int64_t)B * T * Hq) return;
  float s = 0.0f;
  for (int d = lane; d < D; d += 32) s += to_f32(dout[row * D + d]) * to_f32(out[row * D + d]);
  s = warp_sum(s);
  if (lane == 0) {
    const int64_t h = row % Hq, bt = row / Hq, b = bt / T, t = bt % T;
    delta[(b * Hq + h) * T + t] = s;
    lse2[(b * Hq + h) * T + t] = lse[row] * kLog2e;
  }
}

__device__ __forceinline__ void atomic_add2(float* p, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(x, y));
#else
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#endif
}

// Grid (Hq, B, ceil(T/64)), 128 threads, 2 blocks per SM. g = lane/4, c = lane%4. Fragments (C layout)
// of Sᵀ, Pᵀ, dPᵀ, dSᵀ [16 keys, 64 queries]: element (nt, i) is key 16w + g + 8·(i >= 2), query
// 8·nt + 2c + (i & 1) of the query block.
template <int D>
__global__ void __launch_bounds__(128, 2)
    attention_train_bwd_kernel(float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv,
                               const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                               const __nv_bfloat16* __restrict__ v, const __nv_bfloat16* __restrict__ dout,
                               const float* __restrict__ lse2, const float* __restrict__ delta,
                               const int* __restrict__ begin, int T, int Hq, int Hkv, float scale_log2,
                               float scale) {
  constexpr int BLK = kTrainBlock;
  constexpr int LD = D + 8;     // padded smem row (bf16)
  constexpr int LDS = BLK + 8;  // dSᵀ row [64 queries + 8]
  constexpr int KD = D / 16, ND = D / 8, NQ = BLK / 8;
  constexpr int TILE = BLK * LD;
  static_assert(2 * TILE >= BLK * LDS, "dS must fit in the Q and dO tiles it replaces");
  extern __shared__ __align__(16) unsigned char train_bwd_smem[];
  __nv_bfloat16* k_s = reinterpret_cast<__nv_bfloat16*>(train_bwd_smem);  // [64 keys, D+8]
  __nv_bfloat16* v_s = k_s + TILE;                                        // [64 keys, D+8]
  __nv_bfloat16* qg_buf = v_s + TILE;  // [2][Q [64, D+8], dO [64, D+8]]; dSᵀ [64, 72] reuses one
  float* lse_s = reinterpret_cast<float*>(qg_buf + 4 * TILE);  // [2][64] lse·log2(e), +inf past T
  float* dl_s = lse_s + 2 * BLK;                               // [2][64] Δ
  int* bg_s = reinterpret_cast<int*>(dl_s + 2 * BLK);          // [2][64] begin

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int h = blockIdx.x, b = blockIdx.y, hk = h / (Hq / Hkv);
  const int s0 = blockIdx.z * BLK;  // this block's keys [s0, s0 + 64)
  const int64_t ld_q = (int64_t)Hq * D, ld_kv = (int64_t)Hkv * D;
  const __nv_bfloat16* qb = q + ((int64_t)b * T * Hq + h) * D;
  const __nv_bfloat16* gb = dout + ((int64_t)b * T * Hq + h) * D;
  const __nv_bfloat16* kb = k + ((int64_t)b * T * Hkv + hk) * D;
  const __nv_bfloat16* vb = v + ((int64_t)b * T * Hkv + hk) * D;
  const float* lse_row = lse2 + ((int64_t)b * Hq + h) * T;
  const float* dl_row = delta + ((int64_t)b * Hq + h) * T;
  const int* bg = begin ? begin + (int64_t)b * T : nullptr;

  // Query blocks that see these keys: from the block holding s0 (causal) up to the last one whose
  // first query begins at or before the last key (begin is non-decreasing in t).
  const int nqb = (T + BLK - 1) / BLK, qb_lo = blockIdx.z;
  int qb_hi = nqb - 1;
  if (bg)
    for (int i = qb_lo + 1; i < nqb; i++)
      if (bg[i * BLK] > s0 + BLK - 1) {
        qb_hi = i - 1;
        break;
      }

  for (int e = threadIdx.x; e < BLK * (D / 8); e += blockDim.x) {  // K, V tiles; rows >= T zero
    int j = e / (D / 8), vec = e % (D / 8);
    bool ok = s0 + j < T;
    int64_t off = ok ? (s0 + j) * ld_kv + vec * 8 : 0;
    cp_async_16(k_s + j * LD + vec * 8, kb + off, ok);
    cp_async_16(v_s + j * LD + vec * 8, vb + off, ok);
  }
  auto issue_q = [&](int qblk) {  // Q, dO tiles of query block qblk and its per-row values
    const int t0 = qblk * BLK;
    __nv_bfloat16* qs = qg_buf + (qblk & 1) * 2 * TILE;
    __nv_bfloat16* gs = qs + TILE;
    for (int e = threadIdx.x; e < BLK * (D / 8); e += blockDim.x) {
      int r = e / (D / 8), vec = e % (D / 8);
      bool ok = t0 + r < T;
      int64_t off = ok ? (t0 + r) * ld_q + vec * 8 : 0;
      cp_async_16(qs + r * LD + vec * 8, qb + off, ok);
      cp_async_16(gs + r * LD + vec * 8, gb + off, ok);
    }
    cp_async_commit_group();
    for (int r = threadIdx.x; r < BLK; r += blockDim.x) {
      int t = t0 + r, buf = (qblk & 1) * BLK + r;
      lse_s[buf] = t < T ? lse_row[t] : INFINITY;  // P = exp2(s − inf) = 0 for rows past T
      dl_s[buf] = t < T ? dl_row[t] : 0.0f;
      bg_s[buf] = bg && t < T ? bg[t] : 0;
    }
  };

  float dk_acc[ND][4], dv_acc[ND][4];
#pragma unroll
  for (int i = 0; i < ND; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk_acc[i][e] = dv_acc[i][e] = 0.0f;
  const int key_a = s0 + warp * 16 + g, key_b = key_a + 8;  // this thread's two keys

  issue_q(qb_lo);  // its group also carries K and V
  for (int qblk = qb_lo; qblk <= qb_hi; qblk++) {
    const int t0 = qblk * BLK, cur = qblk & 1;
    __syncthreads();  // every warp is done with query block qblk - 1, whose buffers qblk + 1 reuses
    if (qblk < qb_hi) {
      issue_q(qblk + 1);
      cp_async_wait_group<1>();
    } else {
      cp_async_wait_group<0>();
    }
    __syncthreads();
    const __nv_bfloat16* q_s = qg_buf + cur * 2 * TILE;  // [64 queries, D+8]
    const __nv_bfloat16* g_s = q_s + TILE;               // dO [64 queries, D+8]
    const float* lse_b = lse_s + cur * BLK;
    const float* dl_b = dl_s + cur * BLK;
    const int* bg_b = bg_s + cur * BLK;

    // Sᵀ = K_w · Qᵀ and dPᵀ = V_w · dOᵀ, [16 keys, 64 queries] each.
    float s[NQ][4], dp[NQ][4];
#pragma unroll
    for (int nt = 0; nt < NQ; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KD; kk++) {
      uint32_t ka[4], va[4];
      load_a(ka, k_s, LD, warp * 16, kk * 16, lane);
      load_a(va, v_s, LD, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < NQ / 2; np++) {
        uint32_t qf[4], gf[4];
        load_b_nk(qf, q_s, LD, np * 16, kk * 16, lane);
        mma_bf16_16816(s[2 * np], ka, qf[0], qf[1]);
        mma_bf16_16816(s[2 * np + 1], ka, qf[2], qf[3]);
        load_b_nk(gf, g_s, LD, np * 16, kk * 16, lane);
        mma_bf16_16816(dp[2 * np], va, gf[0], gf[1]);
        mma_bf16_16816(dp[2 * np + 1], va, gf[2], gf[3]);
      }
    }
    // Pᵀ = exp2(Sᵀ·scale·log2e − lse2), 0 where the key is in the query's future or before its begin;
    // dSᵀ = Pᵀ∘(dPᵀ − Δ). Both packed to bf16 A fragments (two query n-tiles = one 16-wide k-step).
    const bool masked = s0 + BLK - 1 > t0 || (bg && bg[min(t0 + BLK, T) - 1] > s0);
    uint32_t pa[NQ / 2][4], da[NQ / 2][4];
#pragma unroll
    for (int nt = 0; nt < NQ; nt++) {
      float p[4], ds[4];
#pragma unroll
      for (int e = 0; e < 4; e++) {
        int ql = nt * 8 + 2 * c + (e & 1), key = e < 2 ? key_a : key_b;
        float pe = exp2f(s[nt][e] * scale_log2 - lse_b[ql]);
        if (masked && (key > t0 + ql || key < bg_b[ql])) pe = 0.0f;
        p[e] = pe;
        ds[e] = pe * (dp[nt][e] - dl_b[ql]);
      }
      const int j = nt / 2, hi = (nt & 1) * 2;  // n-tile 2j → a0/a1, 2j+1 → a2/a3
      pa[j][hi] = pack_bf16x2(p[0], p[1]);
      pa[j][hi + 1] = pack_bf16x2(p[2], p[3]);
      da[j][hi] = pack_bf16x2(ds[0], ds[1]);
      da[j][hi + 1] = pack_bf16x2(ds[2], ds[3]);
    }
    // dV_w += Pᵀ · dO and dK_w += dSᵀ · Q, [16 keys, D] each.
#pragma unroll
    for (int j = 0; j < NQ / 2; j++) {
#pragma unroll
      for (int np = 0; np < ND / 2; np++) {
        uint32_t gf[4], qf[4];
        load_b_kn(gf, g_s, LD, np * 16, j * 16, lane);
        mma_bf16_16816(dv_acc[2 * np], pa[j], gf[0], gf[1]);
        mma_bf16_16816(dv_acc[2 * np + 1], pa[j], gf[2], gf[3]);
        load_b_kn(qf, q_s, LD, np * 16, j * 16, lane);
        mma_bf16_16816(dk_acc[2 * np], da[j], qf[0], qf[1]);
        mma_bf16_16816(dk_acc[2 * np + 1], da[j], qf[2], qf[3]);
      }
    }
    __syncthreads();  // Q and dO of this block are read by every warp: dSᵀ may now overwrite them
    __nv_bfloat16* ds_s = qg_buf + cur * 2 * TILE;  // dSᵀ [64 keys, 64 + 8]
#pragma unroll
    for (int j = 0; j < NQ / 2; j++) {
      int kr = warp * 16 + g, col = j * 16 + 2 * c;
      *reinterpret_cast<uint32_t*>(ds_s + kr * LDS + col) = da[j][0];
      *reinterpret_cast<uint32_t*>(ds_s + (kr + 8) * LDS + col) = da[j][1];
      *reinterpret_cast<uint32_t*>(ds_s + kr * LDS + col + 8) = da[j][2];
      *reinterpret_cast<uint32_t*>(ds_s + (kr + 8) * LDS + col + 8) = da[j][3];
    }
    __syncthreads();
    // dQ[16 queries of warp w, D] = dS · K, 32 columns at a time, added to dq by atomics.
    uint32_t sa[BLK / 16][4];
#pragma unroll
    for (int kk = 0; kk < BLK / 16; kk++) load_a_trans(sa[kk], ds_s, LDS, warp * 16, kk * 16, lane);
    const int qa_row = t0 + warp * 16 + g, qb_row = qa_row + 8;
    float* dq_a = dq + (((int64_t)b * T + qa_row) * Hq + h) * D;
    float* dq_b = dq + (((int64_t)b * T + qb_row) * Hq + h) * D;
#pragma unroll
    for (int dc = 0; dc < D / 32; dc++) {
      float acc[4][4];
#pragma unroll
      for (int i = 0; i < 4; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < BLK / 16; kk++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
          uint32_t kf[4];
          load_b_kn(kf, k_s, LD, dc * 32 + half * 16, kk * 16, lane);
          mma_bf16_16816(acc[2 * half], sa[kk], kf[0], kf[1]);
          mma_bf16_16816(acc[2 * half + 1], sa[kk], kf[2], kf[3]);
        }
      }
#pragma unroll
      for (int i = 0; i < 4; i++) {
        int col = dc * 32 + i * 8 + 2 * c;
        if (qa_row < T) atomic_add2(dq_a + col, acc[i][0] * scale, acc[i][1] * scale);
        if (qb_row < T) atomic_add2(dq_b + col, acc[i][2] * scale, acc[i][3] * scale);
      }
    }
  }

  // dK (scaled) and dV of this warp's keys; the query heads of a kv head add into the same rows.
  float* dk_a = dk + (((int64_t)b * T + key_a) * Hkv + hk) * D;
  float* dk_b = dk + (((int64_t)b * T + key_b) * Hkv + hk) * D;
  float* dv_a = dv + (((int64_t)b * T + key_a) * Hkv + hk) * D;
  float* dv_b = dv + (((int64_t)b * T + key_b) * Hkv + hk) * D;
#pragma unroll
  for (int nd = 0; nd < ND; nd++) {
    int col = nd * 8 + 2 * c;
    if (key_a < T) {
      atomic_add2(dk_a + col, dk_acc[nd][0] * scale, dk_acc[nd][1] * scale);
      atomic_add2(dv_a + col, dv_acc[nd][0], dv_acc[nd][1]);
    }
    if (key_b < T) {
      atomic_add2(dk_b + col, dk_acc[nd][2] * scale, dk_acc[nd][3] * scale);
      atomic_add2(dv_b + col, dv_acc[nd][2], dv_acc[nd][3]);
    }
  }
}

// One warp per query row (b, t, h), 4 rows per block; lane holds elements lane + 32i. Keys [begin, t]:
// p = exp2(q·k·scale·log2e − lse2), ds = p·(dout·v − Δ); dq row += Σ ds·k·scale, dk/dv rows by atomics.
template <class TI, class TG>
__global__ void __launch_bounds__(128)
    attention_train_bwd_simple(float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv,
                               const TI* __restrict__ q, const TI* __restrict__ k, const TI* __restrict__ v,
                               const TG* __restrict__ dout, const float* __restrict__ lse2,
                               const float* __restrict__ delta, const int* __restrict__ begin, int B, int T,
                               int Hq, int Hkv, int D, float scale_log2, float scale) {
  constexpr int NV = kTrainMaxD / 32;
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * 4 + threadIdx.x / 32;  // (b·T + t)·Hq + h
  if (row >= (int64_t)B * T * Hq) return;
  const int h = (int)(row % Hq), t = (int)((row / Hq) % T), b = (int)(row / ((int64_t)Hq * T));
  const int hk = h / (Hq / Hkv);
  float qr[NV], gr[NV], dqr[NV];
#pragma unroll
  for (int i = 0; i < NV; i++) {
    int d = lane + 32 * i;
    qr[i] = d < D ? to_f32(q[row * D + d]) : 0.0f;
    gr[i] = d < D ? to_f32(dout[row * D + d]) : 0.0f;
    dqr[i] = 0.0f;
  }
  const float l2 = lse2[((int64_t)b * Hq + h) * T + t], dl = delta[((int64_t)b * Hq + h) * T + t];
  const int lo = begin ? begin[(int64_t)b * T + t] : 0;
  for (int s = lo; s <= t; s++) {
    const int64_t kv = (((int64_t)b * T + s) * Hkv + hk) * D;
    float dot = 0.0f, dpv = 0.0f;
#pragma unroll
    for (int i = 0; i < NV; i++) {
      int d = lane + 32 * i;
      if (d < D) {
        dot += qr[i] * to_f32(k[kv + d]);
        dpv += gr[i] * to_f32(v[kv + d]);
      }
    }
    dot = warp_sum(dot);
    dpv = warp_sum(dpv);
    const float p = exp2f(dot * scale_log2 - l2), ds = p * (dpv - dl);
#pragma unroll
    for (int i = 0; i < NV; i++) {
      int d = lane + 32 * i;
      if (d < D) {
        dqr[i] += ds * to_f32(k[kv + d]);
        atomicAdd(dk + kv + d, ds * qr[i] * scale);
        atomicAdd(dv + kv + d, p * gr[i]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < NV; i++) {
    int d = lane + 32 * i;
    if (d < D) dq[row * D + d] += dqr[i] * scale;  // this warp owns the row
  }
}

// grad[i] += acc[i] (f32 scratch into a bf16/f16 gradient).
template <class TD>
__global__ void add_f32_into(TD* __restrict__ grad, const float* __restrict__ acc, int64_t n) {
  int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) grad[i] = from_f32<TD>(to_f32(grad[i]) + acc[i]);
}

// Where a gradient's f32 sums go: the F32 gradient itself, or zeroed scratch added in at the end.
struct GradSink {
  Tensor* grad;
  Tensor scratch;
  float* ptr = nullptr;
  GradSink(Tensor& g) : grad(&g) {
    if (g.dtype() == DType::F32) {
      ptr = g.data<float>();
    } else {
      scratch = Tensor::empty(g.shape(), DType::F32, Device::CUDA);
      ptr = scratch.data<float>();
      QT_CUDA_CHECK(cudaMemsetAsync(ptr, 0, scratch.nbytes(), stream()));
    }
  }
  void finish(const char* op) {
    if (!scratch.defined()) return;
    int64_t n = grad->numel();
    QT_DISPATCH_FLOAT(grad->dtype(), op, TD, {
      add_f32_into<TD><<<ceil_div(n, 256), 256, 0, stream()>>>(grad->data<TD>(), ptr, n);
    });
    QT_CUDA_CHECK_LAUNCH("add_f32_into");
  }
};

template <int D>
void launch_bwd_mma(GradSink& dq, GradSink& dk, GradSink& dv, const Tensor& dout, const Tensor& q,
                    const Tensor& k, const Tensor& v, const float* lse2, const float* delta, const int* begin,
                    const TrainDims& a) {
  auto kernel = attention_train_bwd_kernel<D>;
  const size_t smem = 6ull * kTrainBlock * (D + 8) * sizeof(__nv_bfloat16) + 6ull * kTrainBlock * 4;
  static const cudaError_t attr_err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  QT_CUDA_CHECK(attr_err);
  dim3 grid(a.Hq, a.B, ceil_div(a.T, kTrainBlock));
  const float scale = 1.0f / std::sqrt((float)D);
  kernel<<<grid, 128, smem, stream()>>>(
      dq.ptr, dk.ptr, dv.ptr, q.data<__nv_bfloat16>(), k.data<__nv_bfloat16>(), v.data<__nv_bfloat16>(),
      dout.data<__nv_bfloat16>(), lse2, delta, begin, a.T, a.Hq, a.Hkv, scale * kLog2e, scale);
  QT_CUDA_CHECK_LAUNCH("attention_train_bwd_kernel");
}

}  // namespace

void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor* seq_ids) {
  const char* op = "attention_backward";
  TrainDims a = check_train_qkv(op, q, k, v, seq_ids);
  const Shape lse_shape{q.size(0), q.size(1), q.size(2)};
  struct Named {
    const Tensor* t;
    const char* name;
    const Shape* shape;
  };
  for (Named x :
       {Named{&dq, "dq", &q.shape()}, Named{&dout, "dout", &q.shape()}, Named{&out, "out", &q.shape()},
        Named{&dk, "dk", &k.shape()}, Named{&dv, "dv", &k.shape()}, Named{&lse, "lse", &lse_shape}}) {
    require_cuda(*x.t, op, x.name);
    if (x.t->shape() != *x.shape)
      throw_error(ErrorKind::Shape, op, ": '", x.name, "' ", x.t->describe(), " has the wrong shape for q ",
                  q.describe(), ", k ", k.describe());
    if (x.t == &lse)
      require_dtype(lse, op, "lse", DType::F32);
    else
      require_dtype(*x.t, op, x.name, DType::BF16, DType::F32, DType::F16);
  }
  if (a.B == 0 || a.T == 0 || a.Hq == 0 || a.D == 0) return;
  Tensor begin_t = train_key_begin(seq_ids, a);
  const int* begin = begin_t.defined() ? begin_t.data<int>() : nullptr;

  // Δ and lse·log2(e), [2, B, Hq, T].
  const int64_t rows = (int64_t)a.B * a.T * a.Hq;
  Tensor rowvals = Tensor::empty({2, a.B, a.Hq, a.T}, DType::F32, Device::CUDA);
  float* delta = rowvals.data<float>();
  float* lse2 = delta + rows;
  QT_DISPATCH_FLOAT(dout.dtype(), op, TG, {
    QT_DISPATCH_FLOAT(out.dtype(), op, TO, {
      attention_train_bwd_prep<TG, TO><<<ceil_div(rows, 8), 256, 0, stream()>>>(
          delta, lse2, dout.data<TG>(), out.data<TO>(), lse.data<float>(), a.B, a.T, a.Hq, a.D);
    });
  });
  QT_CUDA_CHECK_LAUNCH("attention_train_bwd_prep");

  GradSink gq(dq), gk(dk), gv(dv);
  const float scale = 1.0f / std::sqrt((float)a.D);
  if (train_mma_supported(q, k, v, &dout)) {
    switch (a.D) {
      case 32:
        launch_bwd_mma<32>(gq, gk, gv, dout, q, k, v, lse2, delta, begin, a);
        break;
      case 64:
        launch_bwd_mma<64>(gq, gk, gv, dout, q, k, v, lse2, delta, begin, a);
        break;
      case 96:
        launch_bwd_mma<96>(gq, gk, gv, dout, q, k, v, lse2, delta, begin, a);
        break;
      default:
        launch_bwd_mma<128>(gq, gk, gv, dout, q, k, v, lse2, delta, begin, a);
        break;
    }
  } else {
    QT_DISPATCH_FLOAT(q.dtype(), op, TI, {
      QT_DISPATCH_FLOAT(dout.dtype(), op, TG, {
        attention_train_bwd_simple<TI, TG><<<ceil_div(rows, 4), 128, 0, stream()>>>(
            gq.ptr, gk.ptr, gv.ptr, q.data<TI>(), k.data<TI>(), v.data<TI>(), dout.data<TG>(), lse2, delta,
            begin, a.B, a.T, a.Hq, a.Hkv, a.D, scale * kLog2e, scale);
      });
    });
    QT_CUDA_CHECK_LAUNCH("attention_train_bwd_simple");
  }
  gq.finish(op);
  gk.finish(op);
  gv.finish(op);
}

}  // namespace cuda
}  // namespace qtune
