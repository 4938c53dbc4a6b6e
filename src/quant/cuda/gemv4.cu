// Fused 4-bit GEMV for one or two rows of x (decode): out[r, o] = Σ_i x[r, i] · W[o, i] with W in NF4/FP4
// blocks, reading each packed byte once.
//   y[r, o] = Σ_chunks absmax(chunk) · Σ_{32 weights of the chunk} code[q] · x[r, i]     (f32)
// A thread block of 128 threads owns R output rows; its threads stride over the rows' 32-weight chunks
// (16 packed bytes each, always inside one quantization block), so a chunk of x is loaded and widened
// once for R rows. Per weight: one PRMT (the nibble, pre-shifted to a byte offset), one shared-memory load
// of the code value, one FFMA per row of x; the next chunk's packed words are loaded before the current
// ones are used. Partial sums: warp shuffles, then the block's warps in order through shared memory.
// The code value times absmax is not rounded to bf16 here (the factorisation needs it exact), unlike the
// dequantized weights of the many-token path; the difference is within bf16 rounding of the weights.
#include "quant/cuda/quant_device.cuh"

namespace qtune {

using namespace quant_cuda;

namespace {

constexpr int kGemvThreads = 128;

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

template <int R>
__device__ __forceinline__ void load_rows(uint4 (&w)[R], const Gemv4Params& p, int o0, int nchunk, int c) {
#pragma unroll
  for (int r = 0; r < R; r++)
    w[r] = o0 + r < p.O ? __ldcs(p.packed + (int64_t)(o0 + r) * nchunk + c) : make_uint4(0, 0, 0, 0);
}

template <int NR, int R>
__global__ void __launch_bounds__(kGemvThreads) gemv4_kernel(const Gemv4Params p) {
  __shared__ float code[16];
  __shared__ float ncode[256];
  __shared__ float red[kGemvThreads / 32][R * NR];
  if (threadIdx.x < 16) code[threadIdx.x] = p.code[threadIdx.x];
  if (!p.am.absmax)
    for (int i = threadIdx.x; i < 256; i += kGemvThreads) ncode[i] = p.am.nested_code[i];
  __syncthreads();
  const char* code_bytes = reinterpret_cast<const char*>(code);
  const int nchunk = p.I >> 5, o0 = blockIdx.x * R;
  float acc[R][NR];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int n = 0; n < NR; n++) acc[r][n] = 0.0f;
  uint4 cur[R];
  int c = threadIdx.x;
  if (c < nchunk) load_rows<R>(cur, p, o0, nchunk, c);
  for (; c < nchunk; c += kGemvThreads) {
    uint4 nxt[R];
    if (c + kGemvThreads < nchunk) load_rows<R>(nxt, p, o0, nchunk, c + kGemvThreads);
    float xf[NR][32];  // the chunk of x, widened to f32
#pragma unroll
    for (int n = 0; n < NR; n++) {
      const uint4* xv = reinterpret_cast<const uint4*>(p.x + (int64_t)n * p.I) + 4 * c;
#pragma unroll
      for (int q = 0; q < 4; q++) {
        const uint4 u = __ldg(xv + q);
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
          xf[n][8 * q + 2 * k] = __uint_as_float(w[k] << 16);
          xf[n][8 * q + 2 * k + 1] = __uint_as_float(w[k] & 0xFFFF0000u);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
      if (o0 + r >= p.O) break;
      const int64_t e = ((int64_t)(o0 + r) * nchunk + c) << 5;
      const float s = block_absmax(p.am, e >> p.lg_bs, ncode);
      const uint32_t words[4] = {cur[r].x, cur[r].y, cur[r].z, cur[r].w};
      float t[NR];
#pragma unroll
      for (int n = 0; n < NR; n++) t[n] = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const uint32_t hi = (words[j] >> 2) & 0x3C3C3C3Cu;  // byte b: 4 · (high nibble) = element 2b
        const uint32_t lo = (words[j] << 2) & 0x3C3C3C3Cu;  // byte b: 4 · (low nibble)  = element 2b + 1
#pragma unroll
        for (int b = 0; b < 4; b++) {
          const float w0 = *reinterpret_cast<const float*>(code_bytes + __byte_perm(hi, 0, 0x4440 | b));
          const float w1 = *reinterpret_cast<const float*>(code_bytes + __byte_perm(lo, 0, 0x4440 | b));
#pragma unroll
          for (int n = 0; n < NR; n++) {
            t[n] = fmaf(w0, xf[n][8 * j + 2 * b], t[n]);
            t[n] = fmaf(w1, xf[n][8 * j + 2 * b + 1], t[n]);
          }
        }
      }
#pragma unroll
      for (int n = 0; n < NR; n++) acc[r][n] = fmaf(t[n], s, acc[r][n]);
    }
#pragma unroll
    for (int r = 0; r < R; r++) cur[r] = nxt[r];
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int n = 0; n < NR; n++) {
      const float v = warp_sum(acc[r][n]);
      if (lane == 0) red[warp][r * NR + n] = v;
    }
  __syncthreads();
  if (threadIdx.x < R * NR) {
    const int r = threadIdx.x / NR, n = threadIdx.x % NR, o = o0 + r;
    if (o < p.O) {
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < kGemvThreads / 32; w++) v += red[w][threadIdx.x];
      if (p.bias) v += load_kind(p.bias, o, p.bias_kind);
      store_kind(p.out, (int64_t)n * p.O + o, p.out_kind, v);
    }
  }
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

template <int NR, int R>
void launch(const Gemv4Params& p, cudaStream_t stream) {
  gemv4_kernel<NR, R><<<(p.O + R - 1) / R, kGemvThreads, 0, stream>>>(p);
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
  const int R = a.rows_per_block ? a.rows_per_block : 4;
  if (R != 2 && R != 4 && R != 8)
    throw_error(ErrorKind::Usage, "gemv_4bit_cuda: rows_per_block must be 2, 4 or 8, got ", R);
  if (a.rows == 1)
    R == 2 ? launch<1, 2>(p, stream) : R == 4 ? launch<1, 4>(p, stream) : launch<1, 8>(p, stream);
  else
    R == 2 ? launch<2, 2>(p, stream) : R == 4 ? launch<2, 4>(p, stream) : launch<2, 8>(p, stream);
  check_launch("gemv4_kernel");
}

}  // namespace qtune
