// Fused causal GQA attention on the GPU, flash-attention style: scores never reach device memory; an
// online softmax (running max m, running sum l, f32) rescales the output accumulator tile by tile.
//   out[b, t, h, :] = Σ_s softmax_s(q[b, t, h]·k[b, s, h/G] / sqrt(D)) v[b, s, h/G],  s <= q_offset + t,
//   s < kv_len, G = Hq / Hkv. Exponentials are base 2 on scores pre-scaled by log2(e)/sqrt(D).
// Two kernels:
// - prefill (bf16, D 16/32/64/96/128, T >= 16): a block of 4 warps owns 64 queries of one head; K/V
//   tiles of 64 keys stream into shared memory by cp.async, double-buffered; S = Q·Kᵀ and O += P·V run
//   on the tensor cores (mma.sync m16n8k16, f32 accumulate) with S, P and O in registers, as in
//   FlashAttention-2.
// - split-K (any float dtype, D 8/16/32/64/96/128/256, any T; the decode path): a block owns up to R
//   query rows that share one KV head (the G heads of a group, for all T) and one slice of the keys
//   (flash-decoding: long caches are split over many blocks); K/V tiles of 32 keys in shared memory as
//   f32, used with float4 accesses by all R rows at once; partial (m, l, O) of each slice are merged by a
//   second kernel.
#include <cmath>

#include "core/tensor.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"

namespace qtune {
namespace cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------------------------------------------
// Prefill: tensor-core kernel.

constexpr int kPrefillRows = 64;  // queries per block (16 per warp)
constexpr int kPrefillKeys = 64;  // keys per tile

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (low 16 bits)
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t pack_u16(uint16_t lo, uint16_t hi) {
  return (uint32_t)lo | ((uint32_t)hi << 16);
}

// 16-byte asynchronous copy global → shared; with valid false the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  unsigned saddr = (unsigned)__cvta_generic_to_shared(smem);
  int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(gmem), "r"(src_size));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// d[4] += a[16x16, row] · b[16x8, col]; bf16 in, f32 accumulate.
__device__ __forceinline__ void mma_bf16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Grid (ceil(T/64), Hq, B), 128 threads. Fragment layouts (g = lane/4, c = lane%4):
//   A 16x16: reg0 (row g, k 2c..2c+1), reg1 (row g+8), reg2 (row g, k+8), reg3 (row g+8, k+8);
//   B 16x8: reg0 (k 2c..2c+1, col g), reg1 (k+8); C 16x8: c0,c1 (row g, cols 2c, 2c+1), c2,c3 (row g+8).
template <int D, class TO>
__global__ void __launch_bounds__(128)
    attention_prefill_kernel(TO* __restrict__ out, const __nv_bfloat16* __restrict__ q,
                             const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v, int T,
                             int Hq, int Hkv, int Smax, int q_offset, int kv_len, float scale_log2) {
  constexpr int LD = D + 8;   // padded smem row (bf16), keeps fragment loads free of bank conflicts
  constexpr int KD = D / 16;  // k-steps over the head dim
  constexpr int ND = D / 8;   // n-tiles of the output
  constexpr int NK = kPrefillKeys / 8;
  constexpr int TILE = kPrefillKeys * LD;
  extern __shared__ __align__(16) unsigned char prefill_smem[];
  __nv_bfloat16* k_buf = reinterpret_cast<__nv_bfloat16*>(prefill_smem);  // [2][64, D+8]
  __nv_bfloat16* v_buf = k_buf + 2 * TILE;                                // [2][64, D+8]
  pdl_trigger();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int b = blockIdx.z, h = blockIdx.y, hkv = h / (Hq / Hkv);
  const int row0 = blockIdx.x * kPrefillRows + warp * 16;  // this warp's first query
  const int t0 = row0 + g, t1 = row0 + g + 8;              // this thread's two query rows

  // Q fragments straight from global memory, [16, D] per warp.
  uint32_t qa[KD][4];
  {
    const uint32_t* q0 = reinterpret_cast<const uint32_t*>(q + (((int64_t)b * T + t0) * Hq + h) * D);
    const uint32_t* q1 = reinterpret_cast<const uint32_t*>(q + (((int64_t)b * T + t1) * Hq + h) * D);
#pragma unroll
    for (int kk = 0; kk < KD; kk++) {
      int col = (kk * 16 + 2 * c) / 2;
      qa[kk][0] = t0 < T ? q0[col] : 0u;
      qa[kk][1] = t1 < T ? q1[col] : 0u;
      qa[kk][2] = t0 < T ? q0[col + 4] : 0u;
      qa[kk][3] = t1 < T ? q1[col + 4] : 0u;
    }
  }
  float o[ND][4];
#pragma unroll
  for (int i = 0; i < ND; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

  const int last_t = min(T, (int)(blockIdx.x + 1) * kPrefillRows) - 1;
  const int key_end = min(kv_len, q_offset + last_t + 1);      // keys any query of the block sees
  const int warp_last_pos = q_offset + min(row0 + 15, T - 1);  // this warp's last query position
  const int64_t kv_stride = (int64_t)Hkv * D;                  // between consecutive keys
  const __nv_bfloat16* kb = k + ((int64_t)b * Smax * Hkv + hkv) * D;
  const __nv_bfloat16* vb = v + ((int64_t)b * Smax * Hkv + hkv) * D;

  // K/V tiles arrive by cp.async into two buffers: tile it + 1 loads while tile it is used. Rows at or
  // past key_end are zero-filled (src-size 0), never read.
  auto issue_tile = [&](int tile) {
    int s0 = tile * kPrefillKeys;
    __nv_bfloat16* ks = k_buf + (tile & 1) * TILE;
    __nv_bfloat16* vs = v_buf + (tile & 1) * TILE;
    for (int e = threadIdx.x; e < kPrefillKeys * (D / 8); e += blockDim.x) {
      int j = e / (D / 8), vec = e % (D / 8);
      bool ok = s0 + j < key_end;
      int64_t off = ok ? (s0 + j) * kv_stride + vec * 8 : 0;
      cp_async16(ks + j * LD + vec * 8, kb + off, ok);
      cp_async16(vs + j * LD + vec * 8, vb + off, ok);
    }
    cp_async_commit();
  };
  const int ntiles = (key_end + kPrefillKeys - 1) / kPrefillKeys;
  if (ntiles > 0) issue_tile(0);
  for (int it = 0; it < ntiles; it++) {
    const int s0 = it * kPrefillKeys;
    __syncthreads();  // every warp is done with tile it - 1, whose buffer tile it + 1 reuses
    if (it + 1 < ntiles) {
      issue_tile(it + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();                                     // tile it is in shared memory for every thread
    if (s0 > warp_last_pos || row0 >= T) continue;       // every key of this tile is in this warp's future
    const __nv_bfloat16* k_s = k_buf + (it & 1) * TILE;  // [64, D+8]
    const __nv_bfloat16* v_s = v_buf + (it & 1) * TILE;  // [64, D+8]

    // S[16, 64] = Q · Kᵀ
    float s[NK][4];
#pragma unroll
    for (int nt = 0; nt < NK; nt++) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
      const __nv_bfloat16* krow = k_s + (nt * 8 + g) * LD + 2 * c;
#pragma unroll
      for (int kk = 0; kk < KD; kk++) {
        uint32_t b0 = *reinterpret_cast<const uint32_t*>(krow + kk * 16);
        uint32_t b1 = *reinterpret_cast<const uint32_t*>(krow + kk * 16 + 8);
        mma_bf16(s[nt], qa[kk], b0, b1);
      }
    }
    // Scale, causal/length mask, row max.
    const int p0 = q_offset + t0, p1 = q_offset + t1;
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NK; nt++) {
#pragma unroll
      for (int i = 0; i < 4; i++) {
        int key = s0 + nt * 8 + 2 * c + (i & 1);
        int pos = i < 2 ? p0 : p1;
        float val = (key < kv_len && key <= pos) ? s[nt][i] * scale_log2 : -INFINITY;
        s[nt][i] = val;
        if (i < 2)
          mx0 = fmaxf(mx0, val);
        else
          mx1 = fmaxf(mx1, val);
      }
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    float a0 = mn0 == -INFINITY ? 1.0f : exp2f(m0 - mn0);
    float a1 = mn1 == -INFINITY ? 1.0f : exp2f(m1 - mn1);
    m0 = mn0;
    m1 = mn1;
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NK; nt++) {
      s[nt][0] = mn0 == -INFINITY ? 0.0f : exp2f(s[nt][0] - mn0);
      s[nt][1] = mn0 == -INFINITY ? 0.0f : exp2f(s[nt][1] - mn0);
      s[nt][2] = mn1 == -INFINITY ? 0.0f : exp2f(s[nt][2] - mn1);
      s[nt][3] = mn1 == -INFINITY ? 0.0f : exp2f(s[nt][3] - mn1);
      sum0 += s[nt][0] + s[nt][1];
      sum1 += s[nt][2] + s[nt][3];
    }
    l0 = l0 * a0 + sum0;  // per-thread partial sums; the quad adds them up at the end
    l1 = l1 * a1 + sum1;
#pragma unroll
    for (int nd = 0; nd < ND; nd++) {
      o[nd][0] *= a0;
      o[nd][1] *= a0;
      o[nd][2] *= a1;
      o[nd][3] *= a1;
    }
    // O[16, D] += P[16, 64] · V[64, D]; P's C fragments of two key n-tiles form one A fragment.
    const uint16_t* vs = reinterpret_cast<const uint16_t*>(v_s);
#pragma unroll
    for (int j = 0; j < kPrefillKeys / 16; j++) {
      uint32_t pa[4] = {pack_bf16(s[2 * j][0], s[2 * j][1]), pack_bf16(s[2 * j][2], s[2 * j][3]),
                        pack_bf16(s[2 * j + 1][0], s[2 * j + 1][1]),
                        pack_bf16(s[2 * j + 1][2], s[2 * j + 1][3])};
      const uint16_t* vr = vs + (16 * j + 2 * c) * LD + g;
#pragma unroll
      for (int nd = 0; nd < ND; nd++) {
        uint32_t b0 = pack_u16(vr[nd * 8], vr[LD + nd * 8]);
        uint32_t b1 = pack_u16(vr[8 * LD + nd * 8], vr[9 * LD + nd * 8]);
        mma_bf16(o[nd], pa, b0, b1);
      }
    }
  }

  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  TO* out0 = out + (((int64_t)b * T + t0) * Hq + h) * D;
  TO* out1 = out + (((int64_t)b * T + t1) * Hq + h) * D;
#pragma unroll
  for (int nd = 0; nd < ND; nd++) {
    int col = nd * 8 + 2 * c;
    if (t0 < T) {
      out0[col] = from_f32<TO>(o[nd][0] * inv0);
      out0[col + 1] = from_f32<TO>(o[nd][1] * inv0);
    }
    if (t1 < T) {
      out1[col] = from_f32<TO>(o[nd][2] * inv1);
      out1[col + 1] = from_f32<TO>(o[nd][3] * inv1);
    }
  }
}

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
// Per tile of 32 keys: 16-byte loads (lane = key) prefetched one tile ahead, stored as f32 rows padded to
// D + 4 (float4 accesses without bank conflicts); scores with warp w over a quarter of the head dim and
// lane = key, all R rows at once; softmax one warp per row; P·V with warp w over 8 of the keys and
// lane over 4 dims, all R rows; the warps' partial outputs are summed once at the end.
template <class TI, class TO, int D, int R>
__global__ void __launch_bounds__(kSplitThreads)
    attention_split_kernel(TO* __restrict__ out, float* __restrict__ part_o, float* __restrict__ part_ml,
                           const TI* __restrict__ q, const TI* __restrict__ k, const TI* __restrict__ v,
                           int T, int Hq, int Hkv, int Smax, int q_offset, int kv_len, int groups, int chunk,
                           float scale_log2) {
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

  for (int e = tid; e < R * D; e += kSplitThreads) {
    int r = e / D, d = e % D, rr = rg * R + r;
    float val = 0.0f;
    if (rr < GT) {
      int t = rr / G, h = hkv * G + rr % G;
      val = to_f32(q[(((int64_t)b * T + t) * Hq + h) * D + d]) * scale_log2;
    }
    q_s[e] = val;
  }
  if (tid < R) {
    int rr = rg * R + tid;
    lim_s[tid] = rr < GT ? min(kv_len, q_offset + rr / G + 1) : 0;
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.0f;
  }
  const int last_rr = min(rg * R + R, GT) - 1;
  const int group_end = min(kv_len, q_offset + last_rr / G + 1);
  const int s_begin = split * chunk, s_end = min(s_begin + chunk, group_end);
  const int64_t kv_stride = (int64_t)Hkv * D;
  const TI* kb = k + ((int64_t)b * Smax * Hkv + hkv) * D;
  const TI* vb = v + ((int64_t)b * Smax * Hkv + hkv) * D;
  float acc[NC][R][4];  // this warp's keys: rows r, dims chunk * 128 + lane * 4 + i
#pragma unroll
  for (int c = 0; c < NC; c++)
#pragma unroll
    for (int r = 0; r < R; r++) acc[c][r][0] = acc[c][r][1] = acc[c][r][2] = acc[c][r][3] = 0.0f;

  uint4 kr[NV], vr[NV];
  auto load_tile = [&](int s0) {
#pragma unroll
    for (int i = 0; i < NV; i++) {
      int idx = tid + i * kSplitThreads, j = idx % BK, vd = idx / BK;
      kr[i] = vr[i] = make_uint4(0, 0, 0, 0);
      if (idx < NVT && s0 + j < s_end) {
        kr[i] = *reinterpret_cast<const uint4*>(kb + (s0 + j) * kv_stride + vd * VEC);
        vr[i] = *reinterpret_cast<const uint4*>(vb + (s0 + j) * kv_stride + vd * VEC);
      }
    }
  };
  if (s_begin < s_end) load_tile(s_begin);

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
template <class TO>
__global__ void attention_combine_kernel(TO* __restrict__ out, const float* __restrict__ part_o,
                                         const float* __restrict__ part_ml, int nsplit, int rows, int T,
                                         int Hq, int Hkv, int D) {
  pdl_trigger();
  int row = blockIdx.x;
  int G = Hq / Hkv, GT = G * T;
  int bh = row / GT, rr = row % GT;
  int b = bh / Hkv, hkv = bh % Hkv, t = rr / G, h = hkv * G + rr % G;
  float M = -INFINITY;
  for (int s = 0; s < nsplit; s++) M = fmaxf(M, part_ml[((int64_t)s * rows + row) * 2]);
  float L = 0.0f;
  for (int s = 0; s < nsplit; s++) {
    float m = part_ml[((int64_t)s * rows + row) * 2];
    if (m != -INFINITY) L += exp2f(m - M) * part_ml[((int64_t)s * rows + row) * 2 + 1];
  }
  TO* o = out + (((int64_t)b * T + t) * Hq + h) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < nsplit; s++) {
      float m = part_ml[((int64_t)s * rows + row) * 2];
      if (m != -INFINITY) acc += exp2f(m - M) * part_o[((int64_t)s * rows + row) * D + d];
    }
    o[d] = from_f32<TO>(L > 0.0f ? acc / L : 0.0f);
  }
}

struct AttnDims {
  int B, T, Hq, Hkv, D, Smax, q_offset, kv_len;
};

template <class TI, class TO, int D, int R>
void launch_split_typed(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& a) {
  CudaContext& ctx = context();
  const int G = a.Hq / a.Hkv, GT = G * a.T;
  const int groups = ceil_div(GT, R);
  const int base_blocks = a.B * a.Hkv * groups;
  const int max_keys = std::min(a.kv_len, a.q_offset + a.T);
  // Enough slices to give each multiprocessor a few blocks, each slice at least kSplitMinKeys keys.
  int nsplit =
      std::max(1, std::min(ceil_div(4 * ctx.num_sms, base_blocks), ceil_div(max_keys, kSplitMinKeys)));
  int chunk = ceil_div(ceil_div(max_keys, nsplit), kSplitKeys) * kSplitKeys;
  nsplit = ceil_div(max_keys, chunk);
  size_t smem = split_smem_bytes(R, D);
  auto kernel = attention_split_kernel<TI, TO, D, R>;
  if (smem > 48 * 1024) {
    if (smem > ctx.max_smem_optin)
      throw_error(ErrorKind::Unsupported, "attention_forward: head dim ", D, " needs ", smem,
                  " bytes of shared memory, more than the device allows");
    QT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  }
  const int rows = a.B * a.Hkv * GT;
  Tensor part_o, part_ml;
  if (nsplit > 1) {
    part_o = Tensor::empty({nsplit, rows, D}, DType::F32, Device::CUDA);
    part_ml = Tensor::empty({nsplit, rows, 2}, DType::F32, Device::CUDA);
  }
  float scale_log2 = kLog2e / std::sqrt((float)D);
  dim3 grid(base_blocks, nsplit);
  kernel<<<grid, kSplitThreads, smem, ctx.stream>>>(
      out.data<TO>(), nsplit > 1 ? part_o.data<float>() : nullptr,
      nsplit > 1 ? part_ml.data<float>() : nullptr, q.data<TI>(), k.data<TI>(), v.data<TI>(), a.T, a.Hq,
      a.Hkv, a.Smax, a.q_offset, a.kv_len, groups, chunk, scale_log2);
  QT_CUDA_CHECK_LAUNCH("attention_split_kernel");
  if (nsplit > 1) {
    attention_combine_kernel<TO><<<rows, std::min(D, 128), 0, ctx.stream>>>(
        out.data<TO>(), part_o.data<float>(), part_ml.data<float>(), nsplit, rows, a.T, a.Hq, a.Hkv, D);
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

template <int D, class TO>
void launch_prefill_d(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& a) {
  auto kernel = attention_prefill_kernel<D, TO>;
  const size_t smem = 4ull * kPrefillKeys * (D + 8) * sizeof(__nv_bfloat16);  // K and V, two buffers each
  static const cudaError_t attr_err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  QT_CUDA_CHECK(attr_err);
  dim3 grid(ceil_div(a.T, kPrefillRows), a.Hq, a.B);
  float scale_log2 = kLog2e / std::sqrt((float)D);
  kernel<<<grid, 128, smem, stream()>>>(out.data<TO>(), q.data<__nv_bfloat16>(), k.data<__nv_bfloat16>(),
                                        v.data<__nv_bfloat16>(), a.T, a.Hq, a.Hkv, a.Smax, a.q_offset,
                                        a.kv_len, scale_log2);
  QT_CUDA_CHECK_LAUNCH("attention_prefill_kernel");
}

bool prefill_supports(int D) {
  return D == 16 || D == 32 || D == 64 || D == 96 || D == 128;
}

template <class TO>
void launch_prefill(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& a) {
  switch (a.D) {
    case 16:
      launch_prefill_d<16, TO>(out, q, k, v, a);
      break;
    case 32:
      launch_prefill_d<32, TO>(out, q, k, v, a);
      break;
    case 64:
      launch_prefill_d<64, TO>(out, q, k, v, a);
      break;
    case 96:
      launch_prefill_d<96, TO>(out, q, k, v, a);
      break;
    default:
      launch_prefill_d<128, TO>(out, q, k, v, a);
      break;
  }
}

bool aligned16(const Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.raw()) % 16 == 0;
}

}  // namespace

void attention_forward(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset,
                       int64_t kv_len) {
  attention_forward_split(out, q, k, v, q_offset, kv_len, false);
}

// force_split: always the split-K kernel (tests compare both kernels on one input).
void attention_forward_split(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset,
                             int64_t kv_len, bool force_split) {
  const char* op = "attention_forward";
  require_cuda(out, op, "out");
  require_cuda(q, op, "q");
  require_cuda(k, op, "k");
  require_cuda(v, op, "v");
  if (q.ndim() != 4 || k.ndim() != 4)
    throw_error(ErrorKind::Shape, op, ": q must be [B, T, Hq, D] and k [B, Smax, Hkv, D], got q ",
                q.describe(), ", k ", k.describe());
  if (v.shape() != k.shape())
    throw_error(ErrorKind::Shape, op, ": v ", v.describe(), " does not match k ", k.describe());
  if (out.shape() != q.shape())
    throw_error(ErrorKind::Shape, op, ": out ", out.describe(), " does not match q ", q.describe());
  AttnDims a;
  a.B = checked_int(q.size(0), op);
  a.T = checked_int(q.size(1), op);
  a.Hq = checked_int(q.size(2), op);
  a.D = checked_int(q.size(3), op);
  a.Smax = checked_int(k.size(1), op);
  a.Hkv = checked_int(k.size(2), op);
  if (k.size(0) != a.B || k.size(3) != a.D || a.Hkv == 0 || a.Hq % a.Hkv != 0)
    throw_error(ErrorKind::Shape, op, ": k ", k.describe(), " does not fit q ", q.describe(),
                " (same B and D, Hq a multiple of Hkv)");
  if (q_offset < 0 || kv_len < 1 || kv_len > a.Smax)
    throw_error(ErrorKind::Shape, op, ": need q_offset >= 0 and 1 <= kv_len <= Smax = ", a.Smax,
                "; got q_offset ", q_offset, ", kv_len ", kv_len);
  a.q_offset = checked_int(q_offset, op);
  a.kv_len = (int)kv_len;
  checked_int(k.numel(), op);
  checked_int(q.numel(), op);
  if (q.dtype() != k.dtype() || q.dtype() != v.dtype())
    throw_error(ErrorKind::Unsupported, op, ": q ", q.describe(), ", k ", k.describe(), ", v ", v.describe(),
                " must share one dtype");
  require_dtype(q, op, "q", DType::BF16, DType::F32, DType::F16);
  require_dtype(out, op, "out", DType::BF16, DType::F32, DType::F16);
  if (a.B == 0 || a.T == 0 || a.Hq == 0) return;

  const bool prefill = !force_split && q.dtype() == DType::BF16 && prefill_supports(a.D) && a.T >= 16 &&
                       aligned16(k) && aligned16(v) && aligned16(q) && (out.dtype() != DType::F16);
  if (prefill) {
    if (out.dtype() == DType::BF16)
      launch_prefill<__nv_bfloat16>(out, q, k, v, a);
    else
      launch_prefill<float>(out, q, k, v, a);
    return;
  }
  if (!aligned16(k) || !aligned16(v))
    throw_error(ErrorKind::Unsupported, op, ": k and v must start on 16-byte boundaries (k ", k.describe(),
                ")");
  QT_DISPATCH_FLOAT(q.dtype(), op, TI,
                    { QT_DISPATCH_FLOAT(out.dtype(), op, TO, { launch_split<TI, TO>(out, q, k, v, a); }); });
}

}  // namespace cuda
}  // namespace qtune
