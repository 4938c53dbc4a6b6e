// The LLaMA-Adapter's prompt attention (peft/adaption_prompt.h), forward and backward, on the CPU (F32) and
// CUDA. Every query head attends over the Lp prompt rows of its kv head alone (own softmax, no mask):
//   s[n, h, p] = q[n, h]·k[p, j] / √D,  j = h / (Hq/Hkv)
//   P = softmax_p(s) (f32),  out[n, h] = Σ_p (g·P[n, h, p])·v[p, j]          (PEFT: gate · softmax, then ·V)
// Lp is small (10 by default), so both directions are GEMMs over all kv heads at once: the scores
// S = Q·Kᵀ [N·Hq, Lp·Hkv] (Hkv times the needed columns), a row kernel that keeps each row's own kv head
// (softmax, or its backward) and zeroes the other columns, and GEMMs back through the zeros:
//   out = W·V, W = g·P on own columns  |  dS = dout·Vᵀ → Z = ds/√D on own columns,
//   dq += Z·K,  dk = Zᵀ·Q,  dv = Wᵀ·dout,  dg += Σ P ⊙ (dout·V)  (ds = g·P ⊙ (dP̂ − Σ_p P·dP̂), dP̂ = dout·v)
// Temporaries: two [N·Hq, Lp·Hkv] matrices (F32 scores, and W or Z in q's dtype).
//
//   adaption_attention_forward(out, probs, q, k, v, g);                      // probs F32 [N, Hq, Lp]
//   adaption_attention_backward(dq, dk, dv, &dg, dout, q, k, v, probs, g);
#pragma once
#include "core/tensor.h"

namespace qtune {

// q [N, Hq, D] (rotated queries); k, v [Lp, Hkv, D]; out [N, Hq, D]; probs F32 [N, Hq, Lp] (written: the
// softmax the backward reads). CPU: all F32. CUDA: q, k, v, out BF16 (or all F32), scores and softmax f32.
void adaption_attention_forward(Tensor& out, Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v,
                                float gate);

// dout [N, Hq, D] like out; dq [N, Hq, D] (+=, q's dtype); dk, dv [Lp, Hkv, D] (overwritten, q's dtype);
// dgate F32 [1] (+=) or null. probs from the forward with the same q, k, gate.
void adaption_attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dgate, const Tensor& dout,
                                 const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs,
                                 float gate);

}  // namespace qtune
