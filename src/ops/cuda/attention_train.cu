// Training attention forward on the GPU (ops/attention.h attention_forward_train): whole sequences,
// causal, GQA, optional packed examples (seq_ids). Query t of head h sees keys s in [begin[t], t]
// (begin = start of its run of equal seq_ids, else 0):
//   out[b,t,h] = Σ_s softmax_s(q·k_s / √D) v_s,  lse[b,t,h] = log Σ_s exp(q·k_s / √D)  (natural log).
// Two kernels:
// - tensor cores (bf16 q/k/v, D 32/64/96/128): FlashAttention-2 forward as the inference prefill
//   (attention_prefill.cu) runs it: 4 warps own 128 queries (32 each: two 16-row m-tiles share every
//   K/V fragment load), K/V tiles of 64 keys double-buffered by cp.async, S = Q·Kᵀ and O += P·V by
//   mma.sync with ldmatrix fragments, online softmax in base 2; it visits only the key tiles
//   [begin[first query], last query] and skips per warp the fully masked ones. (16 queries per warp,
//   Q fragments in registers, is the other variant: H200, 8B shape, 0.225 ms vs 0.171 ms);
// - simple (any float dtype, D <= 256): one warp per query row, online softmax over its visible keys.
// Also the shared argument checks and the packed-sequence begin[] computation (attention_train.h).
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

constexpr float kLn2 = 0.6931471805599453f;

// begin[b, t] for one batch row per warp: a run starts where the id changes; begin is the running max
// of run starts (a warp-wide inclusive scan per chunk of 32, carried between chunks).
__global__ void key_begin_kernel(int* __restrict__ begin, const int* __restrict__ ids, int T) {
  const int b = blockIdx.x, lane = threadIdx.x;
  const int* id = ids + (int64_t)b * T;
  int carry = 0;
  for (int base = 0; base < T; base += 32) {
    int t = base + lane;
    int start = (t < T && (t == 0 || id[t] != id[t - 1])) ? t : -1;
    for (int o = 1; o < 32; o <<= 1) {
      int other = __shfl_up_sync(0xffffffffu, start, o);
      if (lane >= o) start = max(start, other);
    }
    start = max(start, carry);
    if (t < T) begin[(int64_t)b * T + t] = start;
    carry = __shfl_sync(0xffffffffu, start, 31);
  }
}

// Grid (Hq, B, ceil(T / (64·MT))), the latest (most expensive) query blocks first; 128 threads. Each
// warp owns MT m-tiles of 16 consecutive queries; in m-tile i the thread's rows are ta = row0 + 16i + g
// and tb = ta + 8 (g = lane/4, c = lane%4). With MT = 1 the Q fragments stay in registers; with
// MT = 2 (fewer shared-memory loads per mma) they are re-read from shared memory each key tile.
template <int D, int MT, class TO>
__global__ void __launch_bounds__(128)
    attention_train_fwd_kernel(TO* __restrict__ out, float* __restrict__ lse,
                               const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                               const __nv_bfloat16* __restrict__ v, const int* __restrict__ begin, int T,
                               int Hq, int Hkv, float scale_log2) {
  constexpr int LD = D + 8;  // padded smem row (bf16): ldmatrix rows land in distinct banks
  constexpr int KD = D / 16, ND = D / 8, NK = kTrainBlock / 8;
  constexpr int ROWS = 64 * MT, TILE = kTrainBlock * LD;
  extern __shared__ __align__(16) unsigned char train_fwd_smem[];
  __nv_bfloat16* q_s = reinterpret_cast<__nv_bfloat16*>(train_fwd_smem);  // [64·MT, D+8]
  __nv_bfloat16* k_buf = q_s + MT * TILE;                                 // [2][64, D+8]
  __nv_bfloat16* v_buf = k_buf + 2 * TILE;                                // [2][64, D+8]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int h = blockIdx.x, b = blockIdx.y, hk = h / (Hq / Hkv);
  const int t_first = (gridDim.z - 1 - blockIdx.z) * ROWS;
  const int t_last = min(T, t_first + ROWS) - 1;
  const int row0 = t_first + warp * 16 * MT;  // the warp's first query
  const int warp_last = min(row0 + 16 * MT - 1, T - 1);
  const int* bg = begin ? begin + (int64_t)b * T : nullptr;
  const int warp_begin_lo = bg && row0 < T ? bg[row0] : 0;  // begin is non-decreasing in t
  const int key_lo = bg ? bg[t_first] : 0;  // keys any query of the block sees: [key_lo, t_last]

  const int64_t ld_q = (int64_t)Hq * D, ld_kv = (int64_t)Hkv * D;  // between consecutive tokens
  const __nv_bfloat16* qb = q + ((int64_t)b * T * Hq + h) * D;
  const __nv_bfloat16* kb = k + ((int64_t)b * T * Hkv + hk) * D;
  const __nv_bfloat16* vb = v + ((int64_t)b * T * Hkv + hk) * D;

  for (int e = threadIdx.x; e < ROWS * (D / 8); e += blockDim.x) {  // Q tile, rows >= T zero
    int r = e / (D / 8), vec = e % (D / 8);
    bool ok = t_first + r < T;
    cp_async_16(q_s + r * LD + vec * 8, qb + (ok ? (t_first + r) * ld_q + vec * 8 : 0), ok);
  }
  auto issue_tile = [&](int tile) {  // K/V rows past t_last are zero-filled, never seen
    int s0 = tile * kTrainBlock;
    __nv_bfloat16* ks = k_buf + (tile & 1) * TILE;
    __nv_bfloat16* vs = v_buf + (tile & 1) * TILE;
    for (int e = threadIdx.x; e < kTrainBlock * (D / 8); e += blockDim.x) {
      int j = e / (D / 8), vec = e % (D / 8);
      bool ok = s0 + j <= t_last;
      int64_t off = ok ? (s0 + j) * ld_kv + vec * 8 : 0;
      cp_async_16(ks + j * LD + vec * 8, kb + off, ok);
      cp_async_16(vs + j * LD + vec * 8, vb + off, ok);
    }
    cp_async_commit_group();
  };

  uint32_t qa[MT == 1 ? KD : 1][4];  // Q fragments kept in registers when MT == 1
  float o[MT][ND][4];
  float m0[MT], m1[MT], l0[MT], l1[MT];
#pragma unroll
  for (int i = 0; i < MT; i++) {
#pragma unroll
    for (int nd = 0; nd < ND; nd++) o[i][nd][0] = o[i][nd][1] = o[i][nd][2] = o[i][nd][3] = 0.0f;
    m0[i] = m1[i] = -INFINITY;
    l0[i] = l1[i] = 0.0f;
  }

  const int tile_lo = key_lo / kTrainBlock, tile_hi = t_last / kTrainBlock;
  issue_tile(tile_lo);  // its group also carries the Q tile
  for (int it = tile_lo; it <= tile_hi; it++) {
    const int s0 = it * kTrainBlock;
    __syncthreads();  // every warp is done with tile it - 1, whose buffers tile it + 1 reuses
    if (it < tile_hi) {
      issue_tile(it + 1);
      cp_async_wait_group<1>();
    } else {
      cp_async_wait_group<0>();
    }
    __syncthreads();
    if constexpr (MT == 1) {
      if (it == tile_lo) {
#pragma unroll
        for (int kk = 0; kk < KD; kk++) load_a(qa[kk], q_s, LD, warp * 16, kk * 16, lane);
      }
    }
    // The warp's rows see nothing of this tile: all keys in their future or before their example.
    if (row0 >= T || s0 > warp_last || s0 + kTrainBlock - 1 < warp_begin_lo) continue;
    const __nv_bfloat16* k_s = k_buf + (it & 1) * TILE;  // [64, D+8]
    const __nv_bfloat16* v_s = v_buf + (it & 1) * TILE;  // [64, D+8]

    float s[MT][NK][4];  // S[16·MT, 64] = Q · Kᵀ
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
      for (int nt = 0; nt < NK; nt++) s[i][nt][0] = s[i][nt][1] = s[i][nt][2] = s[i][nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KD; kk++) {
      uint32_t qf[MT][4];
#pragma unroll
      for (int i = 0; i < MT; i++) {
        if constexpr (MT == 1) {
#pragma unroll
          for (int e = 0; e < 4; e++) qf[i][e] = qa[kk][e];
        } else {
          load_a(qf[i], q_s, LD, warp * 16 * MT + 16 * i, kk * 16, lane);
        }
      }
#pragma unroll
      for (int np = 0; np < NK / 2; np++) {
        uint32_t kf[4];
        load_b_nk(kf, k_s, LD, np * 16, kk * 16, lane);
#pragma unroll
        for (int i = 0; i < MT; i++) {
          mma_bf16_16816(s[i][2 * np], qf[i], kf[0], kf[1]);
          mma_bf16_16816(s[i][2 * np + 1], qf[i], kf[2], kf[3]);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < MT; i++) {
      // Scale to base 2; mask where a key is in a row's future or before its begin.
      const int ta = row0 + 16 * i + g, tb = ta + 8;
      const bool masked =
          s0 + kTrainBlock - 1 > row0 + 16 * i || (bg && s0 < bg[min(row0 + 16 * i + 15, T - 1)]);
      const int begin_a = masked && bg ? bg[min(ta, T - 1)] : 0,
                begin_b = masked && bg ? bg[min(tb, T - 1)] : 0;
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < NK; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          int key = s0 + nt * 8 + 2 * c + (e & 1);
          float val = s[i][nt][e] * scale_log2;
          if (masked) {
            bool vis = e < 2 ? (key <= ta && key >= begin_a) : (key <= tb && key >= begin_b);
            val = vis ? val : -INFINITY;
          }
          s[i][nt][e] = val;
          if (e < 2)
            mx0 = fmaxf(mx0, val);
          else
            mx1 = fmaxf(mx1, val);
        }
      }
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
      const float mn0 = fmaxf(m0[i], mx0), mn1 = fmaxf(m1[i], mx1);
      const float a0 = mn0 == -INFINITY ? 1.0f : exp2f(m0[i] - mn0);
      const float a1 = mn1 == -INFINITY ? 1.0f : exp2f(m1[i] - mn1);
      const float base0 = mn0 == -INFINITY ? 0.0f : mn0, base1 = mn1 == -INFINITY ? 0.0f : mn1;
      m0[i] = mn0;
      m1[i] = mn1;
      float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
      for (int nt = 0; nt < NK; nt++) {
        s[i][nt][0] = exp2f(s[i][nt][0] - base0);  // exp2(-inf) = 0 for masked entries
        s[i][nt][1] = exp2f(s[i][nt][1] - base0);
        s[i][nt][2] = exp2f(s[i][nt][2] - base1);
        s[i][nt][3] = exp2f(s[i][nt][3] - base1);
        sum0 += s[i][nt][0] + s[i][nt][1];
        sum1 += s[i][nt][2] + s[i][nt][3];
      }
      l0[i] = l0[i] * a0 + sum0;  // per-thread partial sums; the quad adds them up at the end
      l1[i] = l1[i] * a1 + sum1;
#pragma unroll
      for (int nd = 0; nd < ND; nd++) {
        o[i][nd][0] *= a0;
        o[i][nd][1] *= a0;
        o[i][nd][2] *= a1;
        o[i][nd][3] *= a1;
      }
    }
    // O[16·MT, D] += P[16·MT, 64] · V[64, D]; the C fragments of two key n-tiles form one A fragment.
#pragma unroll
    for (int j = 0; j < kTrainBlock / 16; j++) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int i = 0; i < MT; i++) {
        pa[i][0] = pack_bf16x2(s[i][2 * j][0], s[i][2 * j][1]);
        pa[i][1] = pack_bf16x2(s[i][2 * j][2], s[i][2 * j][3]);
        pa[i][2] = pack_bf16x2(s[i][2 * j + 1][0], s[i][2 * j + 1][1]);
        pa[i][3] = pack_bf16x2(s[i][2 * j + 1][2], s[i][2 * j + 1][3]);
      }
#pragma unroll
      for (int np = 0; np < ND / 2; np++) {
        uint32_t vf[4];
        load_b_kn(vf, v_s, LD, np * 16, j * 16, lane);
#pragma unroll
        for (int i = 0; i < MT; i++) {
          mma_bf16_16816(o[i][2 * np], pa[i], vf[0], vf[1]);
          mma_bf16_16816(o[i][2 * np + 1], pa[i], vf[2], vf[3]);
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < MT; i++) {
    float la = l0[i], lb = l1[i];
    la += __shfl_xor_sync(0xffffffffu, la, 1);
    la += __shfl_xor_sync(0xffffffffu, la, 2);
    lb += __shfl_xor_sync(0xffffffffu, lb, 1);
    lb += __shfl_xor_sync(0xffffffffu, lb, 2);
    // Every row sees at least its own key, so l > 0 for the rows written.
    const float inv0 = 1.0f / la, inv1 = 1.0f / lb;
    const int ta = row0 + 16 * i + g, tb = ta + 8;
    TO* out0 = out + (((int64_t)b * T + ta) * Hq + h) * D;
    TO* out1 = out + (((int64_t)b * T + tb) * Hq + h) * D;
#pragma unroll
    for (int nd = 0; nd < ND; nd++) {
      int col = nd * 8 + 2 * c;
      if (ta < T) {
        out0[col] = from_f32<TO>(o[i][nd][0] * inv0);
        out0[col + 1] = from_f32<TO>(o[i][nd][1] * inv0);
      }
      if (tb < T) {
        out1[col] = from_f32<TO>(o[i][nd][2] * inv1);
        out1[col + 1] = from_f32<TO>(o[i][nd][3] * inv1);
      }
    }
    if (c == 0) {
      if (ta < T) lse[((int64_t)b * T + ta) * Hq + h] = (m0[i] + log2f(la)) * kLn2;
      if (tb < T) lse[((int64_t)b * T + tb) * Hq + h] = (m1[i] + log2f(lb)) * kLn2;
    }
  }
}

// One warp per query row (b, t, h), 4 rows per block; lane holds elements lane + 32i of q and the
// output accumulator. Online softmax over keys [begin, t] in f32 (natural exp).
template <class TI, class TO>
__global__ void __launch_bounds__(128)
    attention_train_fwd_simple(TO* __restrict__ out, float* __restrict__ lse, const TI* __restrict__ q,
                               const TI* __restrict__ k, const TI* __restrict__ v,
                               const int* __restrict__ begin, int B, int T, int Hq, int Hkv, int D,
                               float scale) {
  constexpr int NV = kTrainMaxD / 32;
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * 4 + threadIdx.x / 32;  // (b·T + t)·Hq + h
  if (row >= (int64_t)B * T * Hq) return;
  const int h = (int)(row % Hq), t = (int)((row / Hq) % T), b = (int)(row / ((int64_t)Hq * T));
  const int hk = h / (Hq / Hkv);
  float qr[NV], acc[NV];
#pragma unroll
  for (int i = 0; i < NV; i++) {
    int d = lane + 32 * i;
    qr[i] = d < D ? to_f32(q[row * D + d]) : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int lo = begin ? begin[(int64_t)b * T + t] : 0;
  for (int s = lo; s <= t; s++) {
    const int64_t kv = (((int64_t)b * T + s) * Hkv + hk) * D;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < NV; i++) {
      int d = lane + 32 * i;
      if (d < D) dot += qr[i] * to_f32(k[kv + d]);
    }
    dot = warp_sum(dot) * scale;
    float mn = fmaxf(m, dot), a = expf(m - mn), p = expf(dot - mn);  // a = 0 on the first key
    l = l * a + p;
#pragma unroll
    for (int i = 0; i < NV; i++) {
      int d = lane + 32 * i;
      acc[i] = acc[i] * a + (d < D ? p * to_f32(v[kv + d]) : 0.0f);
    }
    m = mn;
  }
  const float inv = 1.0f / l;
#pragma unroll
  for (int i = 0; i < NV; i++) {
    int d = lane + 32 * i;
    if (d < D) out[row * D + d] = from_f32<TO>(acc[i] * inv);
  }
  if (lane == 0) lse[row] = m + logf(l);
}

// Query m-tiles per warp of the forward kernel (1: 64 queries per block, 2: 128); set_train_forward_mtiles.
int g_fwd_mtiles = 2;

template <int D, int MT, class TO>
void launch_fwd_mma(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                    const int* begin, const TrainDims& a) {
  auto kernel = attention_train_fwd_kernel<D, MT, TO>;
  const size_t smem = (4ull + MT) * kTrainBlock * (D + 8) * sizeof(__nv_bfloat16);  // Q, 2 K and 2 V tiles
  static const cudaError_t attr_err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  QT_CUDA_CHECK(attr_err);
  dim3 grid(a.Hq, a.B, ceil_div(a.T, 64 * MT));
  float scale_log2 = kLog2e / std::sqrt((float)D);
  kernel<<<grid, 128, smem, stream()>>>(out.data<TO>(), lse.data<float>(), q.data<__nv_bfloat16>(),
                                        k.data<__nv_bfloat16>(), v.data<__nv_bfloat16>(), begin, a.T, a.Hq,
                                        a.Hkv, scale_log2);
  QT_CUDA_CHECK_LAUNCH("attention_train_fwd_kernel");
}

template <int D, class TO>
void launch_fwd_mma_d(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                      const int* begin, const TrainDims& a) {
  if (g_fwd_mtiles == 2)
    launch_fwd_mma<D, 2, TO>(out, lse, q, k, v, begin, a);
  else
    launch_fwd_mma<D, 1, TO>(out, lse, q, k, v, begin, a);
}

template <class TO>
void launch_fwd_mma_out(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                        const int* begin, const TrainDims& a) {
  switch (a.D) {
    case 32:
      return launch_fwd_mma_d<32, TO>(out, lse, q, k, v, begin, a);
    case 64:
      return launch_fwd_mma_d<64, TO>(out, lse, q, k, v, begin, a);
    case 96:
      return launch_fwd_mma_d<96, TO>(out, lse, q, k, v, begin, a);
    default:
      return launch_fwd_mma_d<128, TO>(out, lse, q, k, v, begin, a);
  }
}

bool aligned16(const Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.raw()) % 16 == 0;
}

}  // namespace

void set_train_forward_mtiles(int mt) {
  g_fwd_mtiles = mt == 1 ? 1 : 2;  // 0 or anything else: the default
}

TrainDims check_train_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor* seq_ids) {
  require_cuda(q, op, "q");
  require_cuda(k, op, "k");
  require_cuda(v, op, "v");
  if (q.ndim() != 4 || k.ndim() != 4 || v.shape() != k.shape())
    throw_error(ErrorKind::Shape, op, ": q must be [B, T, Hq, D] and k, v [B, T, Hkv, D], got q ",
                q.describe(), ", k ", k.describe(), ", v ", v.describe());
  TrainDims a;
  a.B = checked_int(q.size(0), op);
  a.T = checked_int(q.size(1), op);
  a.Hq = checked_int(q.size(2), op);
  a.D = checked_int(q.size(3), op);
  a.Hkv = checked_int(k.size(2), op);
  if (k.size(0) != a.B || k.size(1) != a.T || k.size(3) != a.D || a.Hkv == 0 || a.Hq % a.Hkv != 0)
    throw_error(ErrorKind::Shape, op, ": k ", k.describe(), " does not fit q ", q.describe(),
                " (same B, T and D; Hq a multiple of Hkv)");
  checked_int(q.numel(), op);
  if (q.dtype() != k.dtype() || q.dtype() != v.dtype())
    throw_error(ErrorKind::Unsupported, op, ": q ", q.describe(), ", k ", k.describe(), ", v ", v.describe(),
                " must share one dtype");
  require_dtype(q, op, "q", DType::BF16, DType::F32, DType::F16);
  if (a.D > kTrainMaxD)
    throw_error(ErrorKind::Unsupported, op, ": head dim ", a.D, " (at most ", kTrainMaxD, ")");
  if (seq_ids) {
    require_cuda(*seq_ids, op, "seq_ids");
    require_dtype(*seq_ids, op, "seq_ids", DType::I32);
    if (seq_ids->shape() != Shape{q.size(0), q.size(1)})
      throw_error(ErrorKind::Shape, op, ": seq_ids ", seq_ids->describe(), " must be [B, T] for q ",
                  q.describe());
  }
  return a;
}

Tensor train_key_begin(const Tensor* seq_ids, const TrainDims& a) {
  if (!seq_ids || a.B == 0 || a.T == 0) return Tensor();
  Tensor begin = Tensor::empty({a.B, a.T}, DType::I32, Device::CUDA);
  key_begin_kernel<<<a.B, 32, 0, stream()>>>(begin.data<int>(), seq_ids->data<int>(), a.T);
  QT_CUDA_CHECK_LAUNCH("key_begin_kernel");
  return begin;
}

bool train_mma_supported(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* also) {
  int64_t D = q.size(3);
  return q.dtype() == DType::BF16 && (D == 32 || D == 64 || D == 96 || D == 128) && aligned16(q) &&
         aligned16(k) && aligned16(v) && (!also || (also->dtype() == DType::BF16 && aligned16(*also)));
}

void attention_forward_train(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor* seq_ids) {
  const char* op = "attention_forward_train";
  TrainDims a = check_train_qkv(op, q, k, v, seq_ids);
  require_cuda(out, op, "out");
  require_cuda(lse, op, "lse");
  if (out.shape() != q.shape() || lse.shape() != Shape{q.size(0), q.size(1), q.size(2)})
    throw_error(ErrorKind::Shape, op, ": out ", out.describe(), " must match q ", q.describe(), " and lse ",
                lse.describe(), " be [B, T, Hq]");
  require_dtype(out, op, "out", DType::BF16, DType::F32, DType::F16);
  require_dtype(lse, op, "lse", DType::F32);
  if (a.B == 0 || a.T == 0 || a.Hq == 0 || a.D == 0) return;
  Tensor begin_t = train_key_begin(seq_ids, a);
  const int* begin = begin_t.defined() ? begin_t.data<int>() : nullptr;

  if (train_mma_supported(q, k, v) && out.dtype() != DType::F16) {
    if (out.dtype() == DType::BF16)
      launch_fwd_mma_out<__nv_bfloat16>(out, lse, q, k, v, begin, a);
    else
      launch_fwd_mma_out<float>(out, lse, q, k, v, begin, a);
    return;
  }
  const int64_t rows = (int64_t)a.B * a.T * a.Hq;
  const float scale = 1.0f / std::sqrt((float)a.D);
  QT_DISPATCH_FLOAT(q.dtype(), op, TI, {
    QT_DISPATCH_FLOAT(out.dtype(), op, TO, {
      attention_train_fwd_simple<TI, TO><<<ceil_div(rows, 4), 128, 0, stream()>>>(
          out.data<TO>(), lse.data<float>(), q.data<TI>(), k.data<TI>(), v.data<TI>(), begin, a.B, a.T, a.Hq,
          a.Hkv, a.D, scale);
    });
  });
  QT_CUDA_CHECK_LAUNCH("attention_train_fwd_simple");
}

}  // namespace cuda
}  // namespace qtune
