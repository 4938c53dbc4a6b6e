// Causal GQA attention, prefill: the tensor-core flash-attention kernel (FlashAttention-2 style).
// A block of 4 warps owns 64 queries of one head; K/V tiles of 64 keys stream into shared memory by
// cp.async, double-buffered; S = Q·Kᵀ and O += P·V run on the tensor cores (mma.sync m16n8k16, bf16 in,
// f32 accumulate) with S, P and O in registers; online softmax in base 2 on scores pre-scaled by
// log2(e)/sqrt(D). bf16 q/k/v, D 16/32/64/96/128, out bf16 or f32.
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

}  // namespace

bool prefill_supports(int D) {
  return D == 16 || D == 32 || D == 64 || D == 96 || D == 128;
}

void launch_attention_prefill(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                              const AttnDims& a) {
  if (out.dtype() == DType::BF16)
    launch_prefill<__nv_bfloat16>(out, q, k, v, a);
  else
    launch_prefill<float>(out, q, k, v, a);
}

}  // namespace cuda
}  // namespace qtune
