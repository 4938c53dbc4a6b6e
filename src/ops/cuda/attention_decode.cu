// Causal GQA attention, split-K (flash-decoding): the decode path, and the generic path for any float
// dtype and head dims 8/16/32/64/96/128/256. A block owns up to R query rows that share one KV head (the
// G heads of a group, for all T new tokens) and one slice of the keys, so long caches spread over many
// blocks; K/V tiles of 32 keys live in shared memory as f32 and are used by all R rows at once; the
// partial (m, l, O) of each slice are merged by a second kernel.
#include <cmath>

#include "core/tensor.h"
#include "ops/cuda/attention_kernels.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"

namespace qtune {
namespace cuda {

namespace {

// ---------------------------------------------------------------------------------------------------
// Split-K (flash-decoding) kernel.

constexpr int kSplitKeys = 32;  // keys per tile (one warp's width, for the softmax reductions)
constexpr int kSplitThreads = 128;
constexpr int kSplitWarps = kSplitThreads / 32;
constexpr int kSplitMinKeys = 64;  // fewest keys a slice gets

size_t split_smem_bytes(int R, int D) {
  size_t floats = (size_t)R * D                           // q_s
                  + 2 * (size_t)kSplitKeys * (D + 4)      // k_s, v_s (reused for the final warp reduction)
                  + (size_t)kSplitWarps * R * kSplitKeys  // partial scores
                  + (size_t)kSplitKeys * R                // p_s
                  + 3 * R;
  return sizeof(float) * floats + sizeof(int) * R;
}

template <class TI>
__device__ __forceinline__ void unpack16_store(const uint4& raw, float* dst) {  // dst 16-byte aligned
  constexpr int VEC = 16 / sizeof(TI);
  const TI* e = reinterpret_cast<const TI*>(&raw);
#pragma unroll
  for (int i = 0; i < VEC; i += 4)
    *reinterpret_cast<float4*>(dst + i) =
        make_float4(to_f32(e[i]), to_f32(e[i + 1]), to_f32(e[i + 2]), to_f32(e[i + 3]));
}

// Grid (B * Hkv * groups, nsplit). Rows of a (b, hkv) pair: rr = t * G + g, query head hkv * G + g.
// Block (.x = (b * Hkv + hkv) * groups + rg) takes rows [rg * R, rg * R + R) and keys
// [split * chunk, split * chunk + chunk). With nsplit == 1 it writes out; else partials:
// part_o [nsplit, rows, D] (unnormalised), part_ml [nsplit, rows, 2] (m, l), rows = B * Hkv * G * T.
// Per tile of 32 keys: 16-byte loads (lane = key) prefetched one tile ahead (the first tile's before q is
// staged, and into the L2 before the wait for the kernel before; 0.5-1 us of a 15 us decode attention),
// stored as f32 rows padded to D + 4 (float4 accesses without bank conflicts); scores with warp w over a
// quarter of the head dim and lane = key, all R rows at once; softmax one warp per row; P·V with warp w over
// 8 of the keys and lane over 4 dims, all R rows; the warps' partial outputs are summed once at the end.
template <class TI, class TO, int D, int R>
__global__ void __launch_bounds__(kSplitThreads)
    attention_split_kernel(TO* __restrict__ out, float* __restrict__ part_o, float* __restrict__ part_ml,
                           const TI* __restrict__ q, const TI* __restrict__ k, const TI* __restrict__ v,
                           int T, int Hq, int Hkv, int Smax, int q_offset, int kv_len, int groups, int chunk,
                           float scale_log2, const int* __restrict__ pos_dev, const TI* __restrict__ k_new,
                           const TI* __restrict__ v_new, const float* __restrict__ inv_freq) {
  constexpr int BK = kSplitKeys;
  constexpr int VEC = 16 / sizeof(TI);                           // elements per 16-byte load
  constexpr int NVT = BK * D / VEC;                              // 16-byte loads per tile, K and V each
  constexpr int NV = (NVT + kSplitThreads - 1) / kSplitThreads;  // per thread
  constexpr int LD = D + 4;                                      // padded smem row (floats)
  constexpr int NQ = D / 4 < kSplitWarps ? D / 4 : kSplitWarps;  // warps sharing the score dot products
  constexpr int DQ = D / NQ;                                     // dims per score warp (multiple of 4)
  constexpr int NC = (D + 127) / 128;                            // 128-dim chunks per lane in P·V
  constexpr int KW = BK / kSplitWarps;                           // keys per warp in P·V
  static_assert(D % 8 == 0 && DQ % 4 == 0 && R % 4 == 0, "attention_split_kernel: shape");
  extern __shared__ __align__(16) float smem[];
  float* q_s = smem;                             // [R, D], pre-scaled
  float* k_s = q_s + R * D;                      // [BK, D+4]
  float* v_s = k_s + BK * LD;                    // [BK, D+4]
  float* sp_s = v_s + BK * LD;                   // [NQ, R, BK] partial scores
  float* p_s = sp_s + kSplitWarps * R * BK;      // [BK, R] probabilities
  float* m_s = p_s + BK * R;                     // [R]
  float* l_s = m_s + R;                          // [R]
  float* a_s = l_s + R;                          // [R] rescale factor of the current tile
  int* lim_s = reinterpret_cast<int*>(a_s + R);  // [R] keys row r may see
  float* red_s = k_s;                            // [4, R, D] after the last tile

  pdl_trigger();
  const int G = Hq / Hkv, GT = G * T;
  const int rg = blockIdx.x % groups, bh = blockIdx.x / groups;
  const int b = bh / Hkv, hkv = bh % Hkv;
  const int split = blockIdx.y;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t kv_stride = (int64_t)Hkv * D;
  const TI* kb = k + ((int64_t)b * Smax * Hkv + hkv) * D;
  const TI* vb = v + ((int64_t)b * Smax * Hkv + hkv) * D;
  const int last_rr = min(rg * R + R, GT) - 1;
  // Before the wait, the L2 is asked for this block's cached key and value rows. The rows before the
  // position were written by earlier steps; the position is read as a guess (the host's copy before the
  // step's first kernel, or a kernel still running), clamped to the cache. A prefetch only moves lines into
  // the L2, where every later read sees the newest data, so a wrong guess costs lines, never values.
  if (pos_dev) {
    const int pg = min(max(*reinterpret_cast<const volatile int*>(pos_dev), 0), Smax - T);
    const int kvl = pg + T;
    const int ch = ((kvl + (int)gridDim.y - 1) / (int)gridDim.y + BK - 1) / BK * BK;
    const int sb = split * ch, se = min(min(sb + ch, min(kvl, pg + last_rr / G + 1)), pg);
    constexpr int kLines = D * (int)sizeof(TI) > 128 ? D * (int)sizeof(TI) / 128 : 1;  // lines per row
    for (int e = tid; e < (se - sb) * kLines; e += kSplitThreads) {
      const int64_t at = (int64_t)(sb + e / kLines) * kv_stride * (int64_t)sizeof(TI) + 128 * (e % kLines);
      asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(kb) + at));
      asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(vb) + at));
    }
  }
  pdl_wait();
  if (pos_dev) {  // device-held position: the same split of keys as the host computes from kv_len
    q_offset = *pos_dev;
    kv_len = q_offset + T;
    chunk = ((kv_len + (int)gridDim.y - 1) / (int)gridDim.y + BK - 1) / BK * BK;
  }
  const int group_end = min(kv_len, q_offset + last_rr / G + 1);
  const int s_begin = split * chunk, s_end = min(s_begin + chunk, group_end);
  const bool owner = k_new && s_begin <= q_offset && q_offset < s_end;
  uint4 kr[NV], vr[NV];
  auto load_tile = [&](int s0) {
#pragma unroll
    for (int i = 0; i < NV; i++) {
      int idx = tid + i * kSplitThreads, j = idx % BK, vd = idx / BK;
      kr[i] = vr[i] = make_uint4(0, 0, 0, 0);
      if (idx < NVT && s0 + j < s_end) {
        // L2 loads (not the read-only path): with RoPE folded in, this block may have just written a row
        kr[i] = __ldcg(reinterpret_cast<const uint4*>(kb + (s0 + j) * kv_stride + vd * VEC));
        vr[i] = __ldcg(reinterpret_cast<const uint4*>(vb + (s0 + j) * kv_stride + vd * VEC));
      }
    }
  };
  // The first tile's loads: now, in flight while q is staged, except in the block that writes the new row
  // (after that write).
  if (!owner && s_begin < s_end) load_tile(s_begin);
  // RoPE folded in (k_new set): the cos and sin of the position's angles, in k_s until the first tile, with
  // rope_forward's arithmetic (full-range sincosf of pos · inv_freq, one rounding to TI per value).
  constexpr int half = D / 2;
  float* cs = k_s;  // [D]: cos, then sin
  if (k_new) {
    for (int i = tid; i < half; i += kSplitThreads) {
      float s, c;
      sincosf((float)q_offset * inv_freq[i], &s, &c);
      cs[i] = c;
      cs[half + i] = s;
    }
    __syncthreads();
  }
  auto rotated = [&](const TI* x, int d) {  // element d of the rotated head x
    const int i = d % half;
    const float c = cs[i], s = cs[half + i], x1 = to_f32(x[i]), x2 = to_f32(x[i + half]);
    return from_f32<TI>(d < half ? x1 * c - x2 * s : x2 * c + x1 * s);
  };

  for (int e = tid; e < R * D; e += kSplitThreads) {
    int r = e / D, d = e % D, rr = rg * R + r;
    float val = 0.0f;
    if (rr < GT) {
      int t = rr / G, h = hkv * G + rr % G;
      const TI* qh = q + (((int64_t)b * T + t) * Hq + h) * D;
      val = to_f32(k_new ? rotated(qh, d) : qh[d]) * scale_log2;
    }
    q_s[e] = val;
  }
  if (tid < R) {
    int rr = rg * R + tid;
    lim_s[tid] = rr < GT ? min(kv_len, q_offset + rr / G + 1) : 0;
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.0f;
  }
  // RoPE folded in: the block whose slice holds the position (the only one that reads that row) writes it
  // first; the caches are this launch's to write.
  if (owner) {
    TI* kd = const_cast<TI*>(kb) + (int64_t)q_offset * kv_stride;
    TI* vd = const_cast<TI*>(vb) + (int64_t)q_offset * kv_stride;
    for (int d = tid; d < D; d += kSplitThreads) {
      kd[d] = rotated(k_new + (int64_t)hkv * D, d);
      vd[d] = v_new[(int64_t)hkv * D + d];
    }
    __syncthreads();  // the row is written before this block's loads read it
  }
  float acc[NC][R][4];  // this warp's keys: rows r, dims chunk * 128 + lane * 4 + i
#pragma unroll
  for (int c = 0; c < NC; c++)
#pragma unroll
    for (int r = 0; r < R; r++) acc[c][r][0] = acc[c][r][1] = acc[c][r][2] = acc[c][r][3] = 0.0f;

  if (owner && s_begin < s_end) load_tile(s_begin);

  for (int s0 = s_begin; s0 < s_end; s0 += BK) {
    __syncthreads();  // q_s/lim_s written, or the previous tile fully used
#pragma unroll
    for (int i = 0; i < NV; i++) {
      int idx = tid + i * kSplitThreads, j = idx % BK, vd = idx / BK;
      if (idx < NVT) {
        unpack16_store<TI>(kr[i], k_s + j * LD + vd * VEC);
        unpack16_store<TI>(vr[i], v_s + j * LD + vd * VEC);
      }
    }
    __syncthreads();
    if (s0 + BK < s_end) load_tile(s0 + BK);  // in flight while this tile is used
    // Partial scores: warp w takes dims [w·DQ, w·DQ + DQ), lane = key, all rows.
    if (warp < NQ) {
      float sc[R];
#pragma unroll
      for (int r = 0; r < R; r++) sc[r] = 0.0f;
      const float* kk = k_s + lane * LD + warp * DQ;
#pragma unroll 4
      for (int d = 0; d < DQ; d += 4) {
        float4 k4 = *reinterpret_cast<const float4*>(kk + d);
#pragma unroll
        for (int r = 0; r < R; r++) {
          float4 q4 = *reinterpret_cast<const float4*>(q_s + r * D + warp * DQ + d);
          sc[r] = fmaf(q4.x, k4.x, fmaf(q4.y, k4.y, fmaf(q4.z, k4.z, fmaf(q4.w, k4.w, sc[r]))));
        }
      }
#pragma unroll
      for (int r = 0; r < R; r++) sp_s[(warp * R + r) * BK + lane] = sc[r];
    }
    __syncthreads();
    // Online softmax, one warp per row, lane = key.
    for (int r = warp; r < R; r += kSplitWarps) {
      int key = s0 + lane;
      float sc = -INFINITY;
      if (key < s_end && key < lim_s[r]) {
        sc = 0.0f;
#pragma unroll
        for (int w = 0; w < NQ; w++) sc += sp_s[(w * R + r) * BK + lane];
      }
      float mx = warp_max(sc);
      float m_old = m_s[r], m_new = fmaxf(m_old, mx);
      float p = m_new == -INFINITY ? 0.0f : exp2f(sc - m_new);
      float alpha = m_new == -INFINITY ? 1.0f : exp2f(m_old - m_new);
      float sum = warp_sum(p);
      p_s[lane * R + r] = p;
      __syncwarp();  // every lane has read m_s[r] before lane 0 replaces it
      if (lane == 0) {
        l_s[r] = l_s[r] * alpha + sum;
        m_s[r] = m_new;
        a_s[r] = alpha;
      }
    }
    __syncthreads();
    // acc[r, d] = acc · alpha[r] + Σ_{j in this warp's keys} p[j, r] v[j, d]
    float alpha[R];
#pragma unroll
    for (int r = 0; r < R; r++) alpha[r] = a_s[r];
#pragma unroll
    for (int c = 0; c < NC; c++) {
      const int d4 = c * 128 + lane * 4;
      if (d4 >= D) break;
#pragma unroll
      for (int r = 0; r < R; r++) {
        acc[c][r][0] *= alpha[r];
        acc[c][r][1] *= alpha[r];
        acc[c][r][2] *= alpha[r];
        acc[c][r][3] *= alpha[r];
      }
#pragma unroll 4
      for (int jj = 0; jj < KW; jj++) {
        const int j = warp * KW + jj;
        float4 v4 = *reinterpret_cast<const float4*>(v_s + j * LD + d4);
#pragma unroll
        for (int r4 = 0; r4 < R; r4 += 4) {
          float4 p4 = *reinterpret_cast<const float4*>(p_s + j * R + r4);
          float pr[4] = {p4.x, p4.y, p4.z, p4.w};
#pragma unroll
          for (int i = 0; i < 4; i++) {
            acc[c][r4 + i][0] = fmaf(pr[i], v4.x, acc[c][r4 + i][0]);
            acc[c][r4 + i][1] = fmaf(pr[i], v4.y, acc[c][r4 + i][1]);
            acc[c][r4 + i][2] = fmaf(pr[i], v4.z, acc[c][r4 + i][2]);
            acc[c][r4 + i][3] = fmaf(pr[i], v4.w, acc[c][r4 + i][3]);
          }
        }
      }
    }
  }
  __syncthreads();  // k_s/v_s are free: they hold the warps' partial outputs next
#pragma unroll
  for (int c = 0; c < NC; c++) {
    const int d4 = c * 128 + lane * 4;
    if (d4 >= D) break;
#pragma unroll
    for (int r = 0; r < R; r++)
      *reinterpret_cast<float4*>(red_s + (warp * R + r) * D + d4) =
          make_float4(acc[c][r][0], acc[c][r][1], acc[c][r][2], acc[c][r][3]);
  }
  __syncthreads();

  const int rows = gridDim.x / groups * GT;  // B * Hkv * G * T
  for (int e = tid; e < R * D; e += kSplitThreads) {
    int r = e / D, d = e % D, rr = rg * R + r;
    if (rr >= GT) continue;
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kSplitWarps; w++) o += red_s[(w * R + r) * D + d];
    if (gridDim.y == 1) {
      int t = rr / G, h = hkv * G + rr % G;
      float l = l_s[r];
      out[(((int64_t)b * T + t) * Hq + h) * D + d] = from_f32<TO>(l > 0.0f ? o / l : 0.0f);
    } else {
      int64_t row = (int64_t)bh * GT + rr;
      part_o[((int64_t)split * rows + row) * D + d] = o;
      if (d == 0) {
        part_ml[((int64_t)split * rows + row) * 2] = m_s[r];
        part_ml[((int64_t)split * rows + row) * 2 + 1] = l_s[r];
      }
    }
  }
}

// Merges the nsplit partials of each row: out = Σ_s 2^(m_s − M) O_s / Σ_s 2^(m_s − M) l_s. Grid rows.
// The (m, l) pairs come into shared memory in one round of loads, and the O_s loads of 8 slices are in
// flight at a time (the sums keep their slice order).
template <class TO>
__global__ void attention_combine_kernel(TO* __restrict__ out, const float* __restrict__ part_o,
                                         const float* __restrict__ part_ml, int nsplit, int rows, int T,
                                         int Hq, int Hkv, int D) {
  extern __shared__ float ml_s[];  // [nsplit] m, then [nsplit] l
  pdl_trigger();
  pdl_wait();
  int row = blockIdx.x;
  int G = Hq / Hkv, GT = G * T;
  int bh = row / GT, rr = row % GT;
  int b = bh / Hkv, hkv = bh % Hkv, t = rr / G, h = hkv * G + rr % G;
  for (int s = threadIdx.x; s < nsplit; s += blockDim.x) {
    ml_s[s] = part_ml[((int64_t)s * rows + row) * 2];
    ml_s[nsplit + s] = part_ml[((int64_t)s * rows + row) * 2 + 1];
  }
  __syncthreads();
  float M = -INFINITY;
  for (int s = 0; s < nsplit; s++) M = fmaxf(M, ml_s[s]);
  float L = 0.0f;
  for (int s = 0; s < nsplit; s++) {
    float m = ml_s[s];
    if (m != -INFINITY) L += exp2f(m - M) * ml_s[nsplit + s];
  }
  TO* o = out + (((int64_t)b * T + t) * Hq + h) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
#pragma unroll 8
    for (int s = 0; s < nsplit; s++) {
      const float po = part_o[((int64_t)s * rows + row) * D + d];
      float m = ml_s[s];
      if (m != -INFINITY) acc += exp2f(m - M) * po;
    }
    o[d] = from_f32<TO>(L > 0.0f ? acc / L : 0.0f);
  }
}

// Slices of max_keys keys for the split kernel with R rows per block: enough to give each multiprocessor
// a few blocks, each slice at least kSplitMinKeys keys. *chunk: keys per slice (a multiple of kSplitKeys).
// In the device-position mode (one token, a CUDA graph per decode step) slices may be one tile short:
// a batch-1 step has only B·Hkv row groups, and its attention is latency-bound.
template <int R>
int split_count(const AttnDims& a, int max_keys, int* chunk) {
  const int groups = ceil_div((a.Hq / a.Hkv) * a.T, R);
  const int base_blocks = a.B * a.Hkv * groups;
  const int min_keys = a.pos_dev ? kSplitKeys : kSplitMinKeys;
  int nsplit =
      std::max(1, std::min(ceil_div(4 * context().num_sms, base_blocks), ceil_div(max_keys, min_keys)));
  *chunk = ceil_div(ceil_div(max_keys, nsplit), kSplitKeys) * kSplitKeys;
  return ceil_div(max_keys, *chunk);
}

template <class TI, class TO, int D, int R>
void launch_split_typed(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& a) {
  CudaContext& ctx = context();
  const int G = a.Hq / a.Hkv, GT = G * a.T;
  const int groups = ceil_div(GT, R);
  const int base_blocks = a.B * a.Hkv * groups;
  // Device-held position: slices for the longest cache (Smax); the kernel sizes them from the position,
  // and trailing slices may be empty.
  const int max_keys = a.pos_dev ? a.Smax : std::min(a.kv_len, a.q_offset + a.T);
  int chunk = 0;
  const int nsplit = split_count<R>(a, max_keys, &chunk);
  size_t smem = split_smem_bytes(R, D);
  auto kernel = attention_split_kernel<TI, TO, D, R>;
  if (smem > 48 * 1024) {
    if (smem > ctx.max_smem_optin)
      throw_error(ErrorKind::Unsupported, "attention_forward: head dim ", D, " needs ", smem,
                  " bytes of shared memory, more than the device allows");
    QT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  }
  const int rows = a.B * a.Hkv * GT;
  Tensor part_o_t, part_ml_t;  // [nsplit, rows, D], [nsplit, rows, 2]
  float *part_o = nullptr, *part_ml = nullptr;
  if (nsplit > 1 && a.workspace) {
    part_o = a.workspace;
    part_ml = a.workspace + (int64_t)nsplit * rows * D;
  } else if (nsplit > 1) {
    part_o_t = Tensor::empty({nsplit, rows, D}, DType::F32, Device::CUDA);
    part_ml_t = Tensor::empty({nsplit, rows, 2}, DType::F32, Device::CUDA);
    part_o = part_o_t.data<float>();
    part_ml = part_ml_t.data<float>();
  }
  float scale_log2 = kLog2e / std::sqrt((float)D);
  dim3 grid(base_blocks, nsplit);
  QT_CUDA_CHECK(launch_pdl(kernel, grid, dim3(kSplitThreads), smem, ctx.stream, out.data<TO>(), part_o,
                           part_ml, q.data<TI>(), k.data<TI>(), v.data<TI>(), a.T, a.Hq, a.Hkv, a.Smax,
                           a.q_offset, a.kv_len, groups, chunk, scale_log2, a.pos_dev,
                           static_cast<const TI*>(a.k_new), static_cast<const TI*>(a.v_new), a.inv_freq));
  QT_CUDA_CHECK_LAUNCH("attention_split_kernel");
  if (nsplit > 1) {
    QT_CUDA_CHECK(launch_pdl(attention_combine_kernel<TO>, dim3(rows), dim3(std::min(D, 128)),
                             2 * nsplit * sizeof(float), ctx.stream, out.data<TO>(), part_o, part_ml, nsplit,
                             rows, a.T, a.Hq, a.Hkv, D));
    QT_CUDA_CHECK_LAUNCH("attention_combine_kernel");
  }
}

template <class TI, class TO>
void launch_split(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& a) {
  const bool small = (a.Hq / a.Hkv) * a.T <= 4;
  switch (a.D) {
#define QT_ATTN_CASE(DD)                                  \
  case DD:                                                \
    if (small)                                            \
      launch_split_typed<TI, TO, DD, 4>(out, q, k, v, a); \
    else                                                  \
      launch_split_typed<TI, TO, DD, 8>(out, q, k, v, a); \
    break;
    QT_ATTN_CASE(8)
    QT_ATTN_CASE(16)
    QT_ATTN_CASE(32)
    QT_ATTN_CASE(64)
    QT_ATTN_CASE(96)
    QT_ATTN_CASE(128)
    QT_ATTN_CASE(256)
#undef QT_ATTN_CASE
    default:
      throw_error(ErrorKind::Unsupported, "attention_forward: head dim ", a.D,
                  " is not supported on CUDA (supported: 8, 16, 32, 64, 96, 128, 256); q ", q.describe());
  }
}

}  // namespace

int64_t attention_split_workspace_floats(const AttnDims& a) {
  int chunk = 0;
  const bool small = (a.Hq / a.Hkv) * a.T <= 4;  // as launch_split picks R
  int nsplit = small ? split_count<4>(a, a.Smax, &chunk) : split_count<8>(a, a.Smax, &chunk);
  if (nsplit <= 1) return 0;
  const int64_t rows = (int64_t)a.B * a.Hq * a.T;
  return (int64_t)nsplit * rows * (a.D + 2);
}

void launch_attention_split(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                            const AttnDims& a) {
  const char* op = "attention_forward";
  QT_DISPATCH_FLOAT(q.dtype(), op, TI,
                    { QT_DISPATCH_FLOAT(out.dtype(), op, TO, { launch_split<TI, TO>(out, q, k, v, a); }); });
}

}  // namespace cuda
}  // namespace qtune
