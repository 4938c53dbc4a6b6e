// The pieces of DoRA (weight-decomposed LoRA) that are not GEMMs, on the CPU (F32) and CUDA, shared by the
// inference forward (peft/lora_layer) and training (train/lora_train). PEFT's DoraLinearLayer computes, for
// a Linear with weight W [O, I], bias b, LoRA factors A [r, I], B [O, r], scale s and magnitude m [O]:
//   norm = ‖W + s·B·A‖_row (detached: a constant for the backward),  d = m / norm,
//   out  = x·Wᵀ + b + (d − 1) ⊙ (xd·Wᵀ) + d ⊙ s·(xd·Aᵀ)·Bᵀ
// where xd is the LoRA input (x through dropout when training with lora_dropout; x itself otherwise, when the
// first two terms become b + d ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ)). All in f32 (PEFT keeps adapter weights in f32 and
// casts to them), rounded once into the output's dtype.
#pragma once
#include "core/tensor.h"
#include "model/linear.h"

namespace qtune {

// The base Linear's weight as the product multiplies with it, dense: CPU F32 [O, I] (a dense weight as is,
// NF4/FP4 and int8 dequantized); CUDA BF16 [O, I] (a fresh buffer for quantized storage).
Tensor dora_dense_weight(const Linear& base);

// norm[O] = ‖w[o, :] + scale·(b·a)[o, :]‖₂ with w [O, I] (CPU F32; CUDA F32 or BF16), a F32 [r, I],
// b F32 [O, r], norm F32, all on one device. f32 products; the CPU sums squares in double.
void dora_weight_norm(Tensor& norm, const Tensor& w, const Tensor& a, const Tensor& b, float scale);

// d[o] = m[o] / norm[o] + offset (offset −1 gives the d − 1 of the dropout path). F32 [O], one device.
void dora_scale(Tensor& d, const Tensor& m, const Tensor& norm, float offset = 0.0f);

// out[n, o] += (d[o] − 1)·(t[n, o] − bias[o]) + d[o]·u[n, o]. out and t [N, O] of one dtype (CPU F32;
// CUDA F32 or BF16; t may be out itself), u F32 [N, O], d F32 [O], bias [O] (F32 or BF16) or null.
void dora_combine(Tensor& out, const Tensor& t, const Tensor& u, const Tensor& d, const Tensor* bias);

// The magnitude's gradient, finished from column sums over the tokens:
//   gm[o] += (cy[o] − bias[o]·cdy[o] + scale·Σ_r b[o, r]·p[o, r]) / norm[o]
// with cy = Σ_n dy ⊙ (xd·Wᵀ + bias), cdy = Σ_n dy (needed only with a bias), p = dyᵀ·h [O, r]
// (h = xd·Aᵀ): together Σ_n dy ⊙ (xd·Wᵀ + s·h·Bᵀ) / norm. All F32 on one device; cdy/bias may be null.
void dora_magnitude_grad(Tensor& gm, const Tensor& cy, const Tensor* cdy, const Tensor* bias, const Tensor& p,
                         const Tensor& b, float scale, const Tensor& norm);

}  // namespace qtune
