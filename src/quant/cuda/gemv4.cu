// Fused 4-bit GEMV for one or two rows of x (decode): out[r, o] = Σ_i x[r, i] · W[o, i] with W in NF4/FP4
// blocks, reading each packed byte once.
//   y[r, o] = Σ_chunks absmax(chunk) · Σ_{32 weights of the chunk} code[q] · x[r, i]     (f32)
// One warp owns R output rows; its lanes stride over the rows' 32-weight chunks (16 packed bytes each,
// always inside one quantization block), loading the chunks two steps ahead of the one being summed, so
// every warp keeps R · 32 bytes per lane in flight. A quarter chunk of x (8 values) is loaded and widened
// once for the R rows. Per weight: one PRMT (the nibble, pre-shifted to a byte offset), one shared-memory
// load of the code value, one FFMA per row of x. The row sums finish with warp shuffles: no block-wide
// synchronisation after the code tables are in shared memory (and the first loads are issued before that).
// The code value times absmax is not rounded to bf16 here (the factorisation needs it exact), unlike the
// dequantized weights of the many-token path; the difference is within bf16 rounding of the weights.
// H200, 8B shapes: 36-41% of copy bandwidth in a CUDA graph (3-4x bitsandbytes standalone), bound by the
// per-weight code lookup in shared memory rather than by DRAM; the variants tried are in bench/NOTES.md.
#include "quant/cuda/quant_device.cuh"

namespace qtune {

using namespace quant_cuda;

namespace {

constexpr int kGemvThreads = 128;  // 4 warps, each with its own rows

struct Gemv4Params {
  const uint4* packed;  // [O, I / 32] chunks of 32 codes
  Absmax4View am;
  int lg_bs;
  float code[16];
  const __nv_bfloat16* x;  // [NR, I]
  void* out;               // [NR, O]
  const void* bias;        // [O] or null
  int out_kind, bias_kind;
  int O, I;
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The packed words of R rows at chunk c and what their absmax needs (the f32 value, or the nested code
// and nested absmax). Rows past O read as zeros.
template <int R, bool kNested>
struct Stage {
  uint4 w[R];
  float a[R];
  uint32_t q[R];
  __device__ __forceinline__ void load(const Gemv4Params& p, int o0, int nchunk, int c) {
#pragma unroll
    for (int r = 0; r < R; r++) {
      const bool ok = o0 + r < p.O;
      const int64_t chunk = (int64_t)(o0 + r) * nchunk + c, blk = (chunk << 5) >> p.lg_bs;
      w[r] = ok ? __ldcs(p.packed + chunk) : make_uint4(0, 0, 0, 0);
      if (kNested) {
        q[r] = ok ? p.am.qabsmax[blk] : 0;
        a[r] = ok ? __ldg(p.am.nested_absmax + (blk >> 8)) : 0.0f;
      } else {
        a[r] = ok ? __ldg(p.am.absmax + blk) : 0.0f;
      }
    }
  }
};

// acc[r][n] += absmax · Σ_{32 weights of chunk c} code · x[n] for the R rows of stage st (two partial
// sums per row, even and odd weights, for two independent FMA chains). tab: the 16 code values.
template <int NR, int R, bool kNested>
__device__ __forceinline__ void chunk_sum(const Gemv4Params& p, const Stage<R, kNested>& st, int c,
                                          const char* tab, const float* ncode, float (&acc)[R][NR]) {
  float sc[R];
#pragma unroll
  for (int r = 0; r < R; r++)
    sc[r] = kNested ? __fadd_rn(__fmul_rn(ncode[st.q[r]], st.a[r]), p.am.offset) : st.a[r];
  float t[R][NR], u[R][NR];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int n = 0; n < NR; n++) t[r][n] = u[r][n] = 0.0f;
#pragma unroll
  for (int j = 0; j < 4; j++) {  // quarter j: weights 8j .. 8j + 7 of the chunk
    float xq[NR][8];
#pragma unroll
    for (int n = 0; n < NR; n++) {
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(p.x + (int64_t)n * p.I) + 4 * c + j);
      const uint32_t xw[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int k = 0; k < 4; k++) {
        xq[n][2 * k] = __uint_as_float(xw[k] << 16);
        xq[n][2 * k + 1] = __uint_as_float(xw[k] & 0xFFFF0000u);
      }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
      const uint32_t word = j == 0 ? st.w[r].x : j == 1 ? st.w[r].y : j == 2 ? st.w[r].z : st.w[r].w;
      const uint32_t hi = (word >> 2) & 0x3C3C3C3Cu;  // byte b: 4 · (high nibble) = element 2b
      const uint32_t lo = (word << 2) & 0x3C3C3C3Cu;  // byte b: 4 · (low nibble)  = element 2b + 1
#pragma unroll
      for (int b = 0; b < 4; b++) {
        const float w0 = *reinterpret_cast<const float*>(tab + __byte_perm(hi, 0, 0x4440 | b));
        const float w1 = *reinterpret_cast<const float*>(tab + __byte_perm(lo, 0, 0x4440 | b));
#pragma unroll
        for (int n = 0; n < NR; n++) {
          t[r][n] = fmaf(w0, xq[n][2 * b], t[r][n]);
          u[r][n] = fmaf(w1, xq[n][2 * b + 1], u[r][n]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int n = 0; n < NR; n++) acc[r][n] = fmaf(t[r][n] + u[r][n], sc[r], acc[r][n]);
}

template <int NR, int R, bool kNested>
__global__ void __launch_bounds__(kGemvThreads) gemv4_kernel(const Gemv4Params p) {
  __shared__ float code[16];
  __shared__ float ncode[kNested ? 256 : 1];
  const int lane = threadIdx.x & 31;
  const int o0 = (blockIdx.x * (kGemvThreads / 32) + (threadIdx.x >> 5)) * R;
  const int nchunk = p.I >> 5;
  const bool active = o0 < p.O;
  Stage<R, kNested> s0, s1, s2;  // chunks c, c + 32, c + 64
  if (active) {
    if (lane < nchunk) s0.load(p, o0, nchunk, lane);
    if (lane + 32 < nchunk) s1.load(p, o0, nchunk, lane + 32);
  }
  if (threadIdx.x < 16) code[threadIdx.x] = p.code[threadIdx.x];
  if (kNested)
    for (int i = threadIdx.x; i < 256; i += kGemvThreads) ncode[i] = p.am.nested_code[i];
  __syncthreads();
  if (!active) return;
  const char* tab = reinterpret_cast<const char*>(code);
  float acc[R][NR];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int n = 0; n < NR; n++) acc[r][n] = 0.0f;
  // Three stages rotate by name (copying a stage would wait for its loads): each step first refills the
  // stage freed two steps ago, then sums the current one.
  for (int c = lane; c < nchunk; c += 96) {
    if (c + 64 < nchunk) s2.load(p, o0, nchunk, c + 64);
    chunk_sum<NR, R, kNested>(p, s0, c, tab, ncode, acc);
    if (c + 32 >= nchunk) break;
    if (c + 96 < nchunk) s0.load(p, o0, nchunk, c + 96);
    chunk_sum<NR, R, kNested>(p, s1, c + 32, tab, ncode, acc);
    if (c + 64 >= nchunk) break;
    if (c + 128 < nchunk) s1.load(p, o0, nchunk, c + 128);
    chunk_sum<NR, R, kNested>(p, s2, c + 64, tab, ncode, acc);
  }
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int n = 0; n < NR; n++) {
      const float v = warp_sum(acc[r][n]);
      if (lane == 0 && o0 + r < p.O) {
        const float y = p.bias ? v + load_kind(p.bias, o0 + r, p.bias_kind) : v;
        store_kind(p.out, (int64_t)n * p.O + o0 + r, p.out_kind, y);
      }
    }
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

template <int NR, int R>
void launch(const Gemv4Params& p, cudaStream_t stream) {
  const int groups = (p.O + R - 1) / R, blocks = (groups + kGemvThreads / 32 - 1) / (kGemvThreads / 32);
  if (p.am.absmax)
    gemv4_kernel<NR, R, false><<<blocks, kGemvThreads, 0, stream>>>(p);
  else
    gemv4_kernel<NR, R, true><<<blocks, kGemvThreads, 0, stream>>>(p);
}

}  // namespace

bool gemv_4bit_supported(int64_t I, const void* packed) {
  return I > 0 && I % 32 == 0 && I <= 0x7fffffff && aligned16(packed);
}

void gemv_4bit_cuda(const Gemv4Args& a, cudaStream_t stream) {
  if (!gemv_4bit_supported(a.I, a.packed) || !aligned16(a.x))
    throw_error(ErrorKind::Usage, "gemv_4bit_cuda: needs I % 32 == 0 (got ", a.I,
                ") and 16-byte aligned packed weights and x");
  if (a.rows < 1 || a.rows > 2)
    throw_error(ErrorKind::Usage, "gemv_4bit_cuda: rows must be 1 or 2, got ", a.rows);
  if (a.O <= 0 || a.O > 0x7fffffff || a.O * (a.I / 32) > ((int64_t)1 << 40))
    throw_error(ErrorKind::Usage, "gemv_4bit_cuda: unsupported size O = ", a.O);
  check_blocksize(a.blocksize, "gemv_4bit_cuda");
  Gemv4Params p;
  p.packed = reinterpret_cast<const uint4*>(a.packed);
  p.am = a.absmax;
  p.lg_bs = 0;
  while ((int64_t(1) << p.lg_bs) < a.blocksize) p.lg_bs++;
  const float* c = code4(a.quant_type);
  for (int i = 0; i < 16; i++) p.code[i] = c[i];
  p.x = static_cast<const __nv_bfloat16*>(a.x);
  p.out = a.out;
  p.bias = a.bias;
  p.out_kind = float_kind(a.out_dtype, "gemv_4bit_cuda (out)");
  p.bias_kind = a.bias ? float_kind(a.bias_dtype, "gemv_4bit_cuda (bias)") : 0;
  p.O = (int)a.O;
  p.I = (int)a.I;
  const int R = a.rows_per_warp ? a.rows_per_warp : 4;
  if (R != 2 && R != 4)
    throw_error(ErrorKind::Usage, "gemv_4bit_cuda: rows_per_warp must be 2 or 4, got ", R);
  if (a.rows == 1)
    R == 2 ? launch<1, 2>(p, stream) : launch<1, 4>(p, stream);
  else
    R == 2 ? launch<2, 2>(p, stream) : launch<2, 4>(p, stream);
  check_launch("gemv4_kernel");
}

}  // namespace qtune
