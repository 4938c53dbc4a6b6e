// CUDA optimizer kernels: the same updates as optim/cpu/adam_kernels.cpp with the same f32 rounding, step
// by step (__fmul_rn / __fadd_rn / __fdiv_rn / __fsqrt_rn never contract; __fmaf_rn where the CPU kernel,
// like torch, fuses), so a CUDA step equals the CPU step bit for bit. 8-bit kernels: dequantize
// (code[q]·absmax), update, absmax of the block, requantize through the same 65536-entry lookup table as
// bitsandbytes' CPU kernel (quant/blockwise8.h); blocks of 256 go one warp per block (8 values per lane,
// vector loads, shuffle max), other block sizes and a partial last block one thread block per state block;
// bnb8_multi_step_cuda runs the warp path of up to 32 tensors in one launch (many small LoRA tensors).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "optim/cuda/optim_cuda.h"

namespace qtune {

namespace {

constexpr int kThreads = 256;
// The warp kernels run 4 warps (state blocks) per thread block: measured on the H200 (256M parameters,
// adamw_8bit) 1.16–1.18 ms at 128 threads against 1.31–1.34 at 256 and 1.41 at 512 (bench/NOTES.md).
constexpr int kWarpThreads = 128;
constexpr int kWarpsPerBlock = kWarpThreads / 32;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_error(ErrorKind::Cuda, what, ": ", cudaGetErrorString(e));
}

struct Scalars {
  float decay, b1, w1, b2, w2, eps, a, b;  // a, b: per-kernel step constants
  bool do_decay;
};

__device__ __forceinline__ float sign_f(float x) {
  return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
}

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, Scalars s) {
  // s.a = sqrt(bc2), s.b = -(lr / bc1)
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    float pi = p[i];
    if (s.do_decay) pi = __fmul_rn(pi, s.decay);
    const float gi = g[i];
    const float mi = __fmaf_rn(s.w1, __fsub_rn(gi, m[i]), m[i]);
    const float vi = __fmaf_rn(__fmul_rn(s.w2, gi), gi, __fmul_rn(v[i], s.b2));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.a), s.eps);
    p[i] = __fadd_rn(pi, __fmul_rn(s.b, __fdiv_rn(mi, denom)));
    m[i] = mi;
    v[i] = vi;
  }
}

__global__ void bnb_adam32_kernel(float* p, const float* g, float* m, float* v, int64_t n, Scalars s) {
  // s.a = -lr·c2/c1 (step size), s.eps = eps·c2
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float gi = g[i];
    const float mi = __fmaf_rn(s.w1, gi, __fmul_rn(m[i], s.b1));
    const float vi = __fmaf_rn(__fmul_rn(s.w2, gi), gi, __fmul_rn(v[i], s.b2));
    float pi = p[i];
    if (s.do_decay) pi = __fmul_rn(pi, s.decay);
    p[i] = __fadd_rn(pi, __fmul_rn(s.a, __fdiv_rn(mi, __fadd_rn(__fsqrt_rn(vi), s.eps))));
    m[i] = mi;
    v[i] = vi;
  }
}

__global__ void bnb_lion32_kernel(float* p, const float* g, float* m, int64_t n, Scalars s) {
  // s.a = -lr
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float gi = g[i];
    float pi = p[i];
    if (s.do_decay) pi = __fmul_rn(pi, s.decay);
    p[i] = __fadd_rn(pi, __fmul_rn(s.a, sign_f(__fadd_rn(__fmul_rn(m[i], s.b1), __fmul_rn(gi, s.w1)))));
    m[i] = __fmaf_rn(s.w2, gi, __fmul_rn(m[i], s.b2));
  }
}

__device__ __forceinline__ float block_max(float x, float* red) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) red[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < (int)(blockDim.x / 32) ? red[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    if (lane == 0) red[0] = x;
  }
  __syncthreads();
  const float r = red[0];
  __syncthreads();
  return r;
}

__device__ __forceinline__ uint8_t lut_code(float x, float inv, const uint8_t* lut) {
  float v = fminf(fmaxf(__fmul_rn(x, inv), -1.0f), 1.0f);
  float t = __fmul_rn(__fadd_rn(v, 1.0f), 0.5f);
  t = __fmul_rn(t, 65535.0f);
  t = __fadd_rn(t, 0.5f);
  return lut[(unsigned int)t];
}

// Two-state (adam) or one-state (lion) 8-bit update of state block blockIdx.x. Each thread owns at most
// kPer values of the block (blocksize <= kThreads · kPer).
constexpr int kPer = 16;

template <bool kLion>
__global__ void bnb8_kernel(float* p, const float* g, uint8_t* q1, float* absmax1, uint8_t* q2,
                            float* absmax2, int64_t n, int blocksize, const float* code1, const float* code2,
                            const uint8_t* lut1, const uint8_t* lut2, Scalars s) {
  __shared__ float red[32];
  const int64_t start = (int64_t)blockIdx.x * blocksize;
  const int len = (int)min((int64_t)blocksize, n - start);
  float s1[kPer], s2[kPer];
  const float am1 = absmax1[blockIdx.x];
  const float am2 = kLion ? 0.0f : absmax2[blockIdx.x];
  float mx1 = 0.0f, mx2 = 0.0f;
  for (int k = 0; k < kPer; ++k) {
    const int j = threadIdx.x + k * blockDim.x;
    if (j >= len) break;
    const int64_t i = start + j;
    const float gi = g[i];
    float m = __fmul_rn(code1[q1[i]], am1);
    float pi = p[i];
    if (s.do_decay) pi = __fmul_rn(pi, s.decay);
    if (kLion) {  // s.a = -lr
      pi = __fadd_rn(pi, __fmul_rn(s.a, sign_f(__fadd_rn(__fmul_rn(m, s.b1), __fmul_rn(gi, s.w1)))));
      m = __fmaf_rn(s.w2, gi, __fmul_rn(m, s.b2));
    } else {  // s.a = c2, s.b = -lr / c1
      float v = __fmul_rn(code2[q2[i]], am2);
      m = __fmaf_rn(s.w1, gi, __fmul_rn(m, s.b1));
      v = __fmaf_rn(__fmul_rn(s.w2, gi), gi, __fmul_rn(v, s.b2));
      const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.a), s.eps);
      pi = __fadd_rn(pi, __fmul_rn(s.b, __fdiv_rn(m, denom)));
      s2[k] = v;
      mx2 = fmaxf(mx2, fabsf(v));
    }
    p[i] = pi;
    s1[k] = m;
    mx1 = fmaxf(mx1, fabsf(m));
  }
  const float a1 = block_max(mx1, red);
  const float a2 = kLion ? 0.0f : block_max(mx2, red);
  const float inv1 = a1 == 0.0f ? 0.0f : __fdiv_rn(1.0f, a1);
  const float inv2 = a2 == 0.0f ? 0.0f : __fdiv_rn(1.0f, a2);
  for (int k = 0; k < kPer; ++k) {
    const int j = threadIdx.x + k * blockDim.x;
    if (j >= len) break;
    const int64_t i = start + j;
    q1[i] = a1 == 0.0f ? 0 : lut_code(s1[k], inv1, lut1);
    if (!kLion) q2[i] = a2 == 0.0f ? 0 : lut_code(s2[k], inv2, lut2);
  }
  if (threadIdx.x == 0) {
    absmax1[blockIdx.x] = a1;
    if (!kLion) absmax2[blockIdx.x] = a2;
  }
}

// The fast path for blocksize 256: one warp per state block, 8 consecutive values per lane (vector
// loads), the block max by warp shuffles alone. Same arithmetic as bnb8_kernel.
// The warp's work: state block blk of the tensor at p.
template <bool kLion>
__device__ __forceinline__ void bnb8_warp_block(float* p, const float* g, uint8_t* q1, float* absmax1,
                                                uint8_t* q2, float* absmax2, int64_t blk, const float* code1,
                                                const float* code2, const uint8_t* lut1, const uint8_t* lut2,
                                                const Scalars& s) {
  const int lane = threadIdx.x & 31;
  const int64_t base = blk * 256 + lane * 8;
  float pv[8], gv[8], s1[8], s2[8];
  *(float4*)&pv[0] = *(const float4*)(p + base);
  *(float4*)&pv[4] = *(const float4*)(p + base + 4);
  *(float4*)&gv[0] = *(const float4*)(g + base);
  *(float4*)&gv[4] = *(const float4*)(g + base + 4);
  uint2 c1 = *(const uint2*)(q1 + base), c2 = kLion ? make_uint2(0, 0) : *(const uint2*)(q2 + base);
  const uint8_t* b1 = (const uint8_t*)&c1;
  const uint8_t* b2 = (const uint8_t*)&c2;
  const float am1 = absmax1[blk];
  const float am2 = kLion ? 0.0f : absmax2[blk];
  float mx1 = 0.0f, mx2 = 0.0f;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float gi = gv[k];
    float m = __fmul_rn(code1[b1[k]], am1);
    float pi = pv[k];
    if (s.do_decay) pi = __fmul_rn(pi, s.decay);
    if (kLion) {
      pi = __fadd_rn(pi, __fmul_rn(s.a, sign_f(__fadd_rn(__fmul_rn(m, s.b1), __fmul_rn(gi, s.w1)))));
      m = __fmaf_rn(s.w2, gi, __fmul_rn(m, s.b2));
    } else {
      float v = __fmul_rn(code2[b2[k]], am2);
      m = __fmaf_rn(s.w1, gi, __fmul_rn(m, s.b1));
      v = __fmaf_rn(__fmul_rn(s.w2, gi), gi, __fmul_rn(v, s.b2));
      const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.a), s.eps);
      pi = __fadd_rn(pi, __fmul_rn(s.b, __fdiv_rn(m, denom)));
      s2[k] = v;
      mx2 = fmaxf(mx2, fabsf(v));
    }
    pv[k] = pi;
    s1[k] = m;
    mx1 = fmaxf(mx1, fabsf(m));
  }
  for (int o = 16; o > 0; o >>= 1) {
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o));
    if (!kLion) mx2 = fmaxf(mx2, __shfl_xor_sync(0xffffffffu, mx2, o));
  }
  const float inv1 = mx1 == 0.0f ? 0.0f : __fdiv_rn(1.0f, mx1);
  const float inv2 = mx2 == 0.0f ? 0.0f : __fdiv_rn(1.0f, mx2);
  uint8_t* o1 = (uint8_t*)&c1;
  uint8_t* o2 = (uint8_t*)&c2;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    o1[k] = mx1 == 0.0f ? 0 : lut_code(s1[k], inv1, lut1);
    if (!kLion) o2[k] = mx2 == 0.0f ? 0 : lut_code(s2[k], inv2, lut2);
  }
  *(float4*)(p + base) = *(float4*)&pv[0];
  *(float4*)(p + base + 4) = *(float4*)&pv[4];
  *(uint2*)(q1 + base) = c1;
  if (!kLion) *(uint2*)(q2 + base) = c2;
  if (lane == 0) {
    absmax1[blk] = mx1;
    if (!kLion) absmax2[blk] = mx2;
  }
}

template <bool kLion>
__global__ void bnb8_warp_kernel(float* p, const float* g, uint8_t* q1, float* absmax1, uint8_t* q2,
                                 float* absmax2, int64_t nblocks, const float* code1, const float* code2,
                                 const uint8_t* lut1, const uint8_t* lut2, Scalars s) {
  const int64_t blk = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (blk >= nblocks) return;
  bnb8_warp_block<kLion>(p, g, q1, absmax1, q2, absmax2, blk, code1, code2, lut1, lut2, s);
}

// Up to kMulti tensors in one launch (kernel parameters, read in place: __grid_constant__): the global
// block index runs over the full 256-blocks of tensor 0, then tensor 1, ...; each warp finds its tensor
// and runs the same block update as bnb8_warp_kernel.
constexpr int kMulti = 32;
struct Bnb8Multi {
  float* p[kMulti];
  const float* g[kMulti];
  uint8_t* q1[kMulti];
  float* absmax1[kMulti];
  uint8_t* q2[kMulti];
  float* absmax2[kMulti];
  Scalars s[kMulti];
  int64_t first[kMulti + 1];  // tensor t owns global blocks [first[t], first[t + 1])
  int count;
};

template <bool kLion>
__global__ void bnb8_warp_multi_kernel(const __grid_constant__ Bnb8Multi m, const float* code1,
                                       const float* code2, const uint8_t* lut1, const uint8_t* lut2) {
  const int64_t blk = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (blk >= m.first[m.count]) return;
  int t = 0;
  while (blk >= m.first[t + 1]) ++t;
  bnb8_warp_block<kLion>(m.p[t], m.g[t], m.q1[t], m.absmax1[t], m.q2[t], m.absmax2[t], blk - m.first[t],
                         code1, code2, lut1, lut2, m.s[t]);
}

bool aligned(const void* ptr, int bytes) {
  return ptr == nullptr || ((uintptr_t)ptr % bytes) == 0;
}

int grid_for(int64_t n) {
  return (int)std::min<int64_t>((n + kThreads - 1) / kThreads, 65535);
}

}  // namespace

void adamw_step_cuda(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h) {
  const double bc1 = 1.0 - std::pow(h.beta1, (double)h.step), bc2 = 1.0 - std::pow(h.beta2, (double)h.step);
  Scalars s{(float)(1.0 - h.lr * h.weight_decay),
            (float)h.beta1,
            (float)(1.0 - h.beta1),
            (float)h.beta2,
            (float)(1.0 - h.beta2),
            (float)h.eps,
            (float)std::sqrt(bc2),
            (float)(-(h.lr / bc1)),
            h.weight_decay != 0.0};
  adamw_kernel<<<grid_for(n), kThreads>>>(p, g, m, v, n, s);
  check(cudaGetLastError(), "adamw_step_cuda");
}

void bnb_adam32_step_cuda(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h) {
  const double c1 = 1.0 - std::pow(h.beta1, (double)h.step),
               c2 = std::sqrt(1.0 - std::pow(h.beta2, (double)h.step));
  Scalars s{(float)(1.0 - h.lr * h.weight_decay),
            (float)h.beta1,
            (float)(1.0 - h.beta1),
            (float)h.beta2,
            (float)(1.0 - h.beta2),
            (float)(h.eps * c2),
            (float)(-h.lr * c2 / c1),
            0.0f,
            h.weight_decay > 0.0};
  bnb_adam32_kernel<<<grid_for(n), kThreads>>>(p, g, m, v, n, s);
  check(cudaGetLastError(), "bnb_adam32_step_cuda");
}

void bnb_lion32_step_cuda(float* p, const float* g, float* m, int64_t n, const AdamHyper& h) {
  Scalars s{(float)(1.0 - h.lr * h.weight_decay),
            (float)h.beta1,
            (float)(1.0 - h.beta1),
            (float)h.beta2,
            (float)(1.0 - h.beta2),
            0.0f,
            (float)(-h.lr),
            0.0f,
            h.weight_decay > 0.0};
  bnb_lion32_kernel<<<grid_for(n), kThreads>>>(p, g, m, n, s);
  check(cudaGetLastError(), "bnb_lion32_step_cuda");
}

namespace {

Scalars bnb8_scalars(bool lion, const AdamHyper& h) {
  const double c1 = 1.0 - std::pow(h.beta1, (double)h.step),
               c2 = std::sqrt(1.0 - std::pow(h.beta2, (double)h.step));
  return Scalars{(float)(1.0 - h.lr * h.weight_decay),
                 (float)h.beta1,
                 (float)(1.0 - h.beta1),
                 (float)h.beta2,
                 (float)(1.0 - h.beta2),
                 (float)h.eps,
                 lion ? (float)(-h.lr) : (float)c2,
                 (float)(-h.lr / c1),
                 h.weight_decay > 0.0};
}

void check_bnb8_blocksize(int64_t blocksize) {
  if (blocksize > (int64_t)kThreads * kPer)
    throw_error(ErrorKind::Unsupported, "8-bit optimizer on CUDA: blocksize ", blocksize, " > ",
                kThreads * kPer);
}

// Full 256-blocks of t go through the warp kernels when the pointers allow vector access.
bool warp_ok(const Bnb8Tensor& t, int64_t blocksize) {
  return blocksize == 256 && aligned(t.p, 16) && aligned(t.g, 16) && aligned(t.q1, 8) && aligned(t.q2, 8);
}

// State blocks [from, end) of t through the general kernel (one thread block per state block).
void bnb8_general(bool lion, const Bnb8Tensor& t, int64_t from, int64_t blocksize, const DeviceQuantMap& map1,
                  const DeviceQuantMap& map2, const Scalars& s) {
  const int64_t blocks = (t.n + blocksize - 1) / blocksize;
  if (from >= blocks) return;
  const int64_t off = from * blocksize;
  const unsigned rest = (unsigned)(blocks - from);
  if (lion)
    bnb8_kernel<true><<<rest, kThreads>>>(t.p + off, t.g + off, t.q1 + off, t.absmax1 + from, nullptr,
                                          nullptr, t.n - off, (int)blocksize, map1.code, nullptr, map1.lut,
                                          nullptr, s);
  else
    bnb8_kernel<false><<<rest, kThreads>>>(t.p + off, t.g + off, t.q1 + off, t.absmax1 + from, t.q2 + off,
                                           t.absmax2 + from, t.n - off, (int)blocksize, map1.code, map2.code,
                                           map1.lut, map2.lut, s);
}

}  // namespace

void bnb8_step_cuda(bool lion, float* p, const float* g, uint8_t* q1, float* absmax1, uint8_t* q2,
                    float* absmax2, int64_t n, int64_t blocksize, const DeviceQuantMap& map1,
                    const DeviceQuantMap& map2, const AdamHyper& h) {
  check_bnb8_blocksize(blocksize);
  const Bnb8Tensor t{p, g, q1, absmax1, lion ? nullptr : q2, lion ? nullptr : absmax2, n, h};
  const Scalars s = bnb8_scalars(lion, h);
  // Full 256-blocks through the warp kernel when the pointers allow vector access; the rest (a partial
  // last block, other block sizes) through the general kernel.
  int64_t done_blocks = 0;
  if (warp_ok(t, blocksize)) {
    done_blocks = n / 256;
    if (done_blocks > 0) {
      const unsigned grid = (unsigned)((done_blocks + kWarpsPerBlock - 1) / kWarpsPerBlock);
      if (lion)
        bnb8_warp_kernel<true><<<grid, kWarpThreads>>>(p, g, q1, absmax1, nullptr, nullptr, done_blocks,
                                                   map1.code, nullptr, map1.lut, nullptr, s);
      else
        bnb8_warp_kernel<false><<<grid, kWarpThreads>>>(p, g, q1, absmax1, q2, absmax2, done_blocks, map1.code,
                                                    map2.code, map1.lut, map2.lut, s);
    }
  }
  bnb8_general(lion, t, done_blocks, blocksize, map1, map2, s);
  check(cudaGetLastError(), "bnb8_step_cuda");
}

void bnb8_multi_step_cuda(bool lion, const std::vector<Bnb8Tensor>& ts, int64_t blocksize,
                          const DeviceQuantMap& map1, const DeviceQuantMap& map2) {
  check_bnb8_blocksize(blocksize);
  Bnb8Multi m;
  m.count = 0;
  m.first[0] = 0;
  auto flush = [&] {
    if (m.count == 0) return;
    const unsigned grid = (unsigned)((m.first[m.count] + kWarpsPerBlock - 1) / kWarpsPerBlock);
    if (lion)
      bnb8_warp_multi_kernel<true><<<grid, kWarpThreads>>>(m, map1.code, nullptr, map1.lut, nullptr);
    else
      bnb8_warp_multi_kernel<false><<<grid, kWarpThreads>>>(m, map1.code, map2.code, map1.lut, map2.lut);
    m.count = 0;
  };
  for (const Bnb8Tensor& t0 : ts) {
    Bnb8Tensor t = t0;
    if (lion) t.q2 = nullptr, t.absmax2 = nullptr;
    const Scalars s = bnb8_scalars(lion, t.h);
    const int64_t full = warp_ok(t, blocksize) ? t.n / 256 : 0;
    if (full > 0) {
      if (m.count == kMulti) flush();
      const int c = m.count++;
      m.p[c] = t.p;
      m.g[c] = t.g;
      m.q1[c] = t.q1;
      m.absmax1[c] = t.absmax1;
      m.q2[c] = t.q2;
      m.absmax2[c] = t.absmax2;
      m.s[c] = s;
      m.first[c + 1] = m.first[c] + full;
    }
    bnb8_general(lion, t, full, blocksize, map1, map2, s);  // a partial last block, or all of t
  }
  flush();
  check(cudaGetLastError(), "bnb8_multi_step_cuda");
}

}  // namespace qtune
