// The LoRA products of a training step with the dropout mask applied while the input is read
// (train/lora_train):
//   forward  mid = (m ⊙ x)·Aᵀ                       lora_down
//   backward h = (m ⊙ x)·Aᵀ, dh = s·dy·B            lora_down (with Bᵀ)
//            dA += dhᵀ·(m ⊙ x), dB += s·dyᵀ·h        lora_down_grad
//            dx += m ⊙ (dh·A)                        lora_up_dx (with Aᵀ)
// where m is the dropout mask with its 1/(1 − p) scale. The mask is a pure function of an element's index in
// the step's [N, K] activation, so the forward, the checkpointing recompute and the backward regenerate it
// instead of storing a dropped copy of x; CPU and GPU drop the same elements. CPU: F32 tensors (the math as
// written); CUDA: BF16 inputs with f32 accumulation (train/cuda/lora_fused.cu).
#pragma once
#include <cstdint>

#include "core/tensor.h"

#ifdef __CUDACC__
#define QT_LORA_HD __host__ __device__
#else
#define QT_LORA_HD
#endif

namespace qtune {

// Element e (its row-major index in the step's whole [N, K] activation) is dropped when the 15 bits
// [16·(e mod 4), +15) of splitmix64(seed + e / 4) fall below threshold; kept ones are scaled by keep.
// One hash serves four neighbouring elements (the GPU kernels hash every fourth element only, and test two
// bf16 at once with one add on the 15-bit fields).
struct LoraMask {
  uint64_t seed = 0;       // one stream per (training seed, micro-batch, module)
  uint64_t e0 = 0;         // the index of the tensor's element 0 (its first row's offset in the step · K)
  uint32_t threshold = 0;  // round(p · 32768); 0 drops nothing
  float keep = 1.0f;       // 1 / (1 − p)
};

// The mask of dropout probability p for an input [·, K] whose row 0 is row `row0` of the step.
LoraMask lora_mask(uint64_t seed, int64_t row0, int64_t K, double p);

QT_LORA_HD inline uint64_t lora_mask_mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Whether element i of the masked tensor is kept.
QT_LORA_HD inline bool lora_mask_keeps(const LoraMask& m, uint64_t i) {
  const uint64_t e = m.e0 + i;
  return ((lora_mask_mix(m.seed + (e >> 2)) >> (16 * (e & 3))) & 0x7FFF) >= m.threshold;
}

// out[N, r] = scale · (m ⊙ x)[N, K] · w[r, K]ᵀ (mask null: x itself). CPU: F32; CUDA: x, w BF16 → out BF16.
void lora_down(Tensor& out, const Tensor& x, const Tensor& w, float scale, const LoraMask* mask);

// The lora_down of up to kLoraGroupMax modules that read the same x (q, k, v; gate, up), each with its own
// mask: outs[i][N, r_i] = (m_i ⊙ x)·w_iᵀ (masks[i] null: no mask). CUDA, BF16, with equal ranks ≤ 16 and
// 16-byte rows: one launch that reads x once (the same values as lora_down per module); otherwise, and on
// the CPU, one lora_down per module.
constexpr int kLoraGroupMax = 3;
void lora_down_group(Tensor* const* outs, const Tensor& x, const Tensor* const* ws,
                     const LoraMask* const* masks, int n);

// g += scale · d[N, r]ᵀ · (m ⊙ x)[N, K] with g F32 [r, K], or g [K, r] (its transpose) when g_kr.
// CPU: F32; CUDA: d, x BF16.
void lora_down_grad(Tensor& g, const Tensor& d, const Tensor& x, float scale, const LoraMask* mask,
                    bool g_kr);

// dx[N, K] += m ⊙ (d[N, r] · wt[K, r]ᵀ). CPU: F32; CUDA: d, wt BF16, dx F32 or BF16.
void lora_up_dx(Tensor& dx, const Tensor& d, const Tensor& wt, const LoraMask* mask);

// out[C, R] = in[R, C]ᵀ. CPU: F32; CUDA: in F32 or BF16, out BF16 (the GEMM copies of the LoRA masters).
void transpose_into(Tensor& out, const Tensor& in);

}  // namespace qtune
