// The ops of a Llama block, one declaration for both backends. Each function dispatches on the device of
// its tensors (all tensors of one call live on one device): CPU kernels in ops/cpu/ compute in f32;
// CUDA kernels in ops/cuda/ take bf16 activations/weights (f32 also accepted) and accumulate in f32.
// All tensors are contiguous. Shapes are written beside each parameter: N = rows (batch × tokens),
// C = hidden, H = heads, D = head dim, F = MLP width, V = vocab, B = batch, T = new tokens, S = keys.
#pragma once
#include "core/tensor.h"

namespace qtune {

// out[N, C] = table[ids[n], :]. ids: I32 [N]; table [V, C]; out has table's dtype (or F32).
void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table);

// out[N, O] = x[N, I] · w[O, I]ᵀ (+ bias[O]). out may be F32 when x/w are BF16 (CUDA).
void linear_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias = nullptr);

// out[N, C] = x / sqrt(mean(x²) + eps) * weight[C]  (HF LlamaRMSNorm: normalise in f32, then scale).
void rmsnorm_forward(Tensor& out, const Tensor& x, const Tensor& weight, float eps);

// In place on x[N, H, D]: HF rotate-half RoPE with angle positions[n] * inv_freq[i], i < D/2.
// positions: I32 [N]; inv_freq: F32 [D/2] (on x's device).
void rope_forward(Tensor& x, const Tensor& positions, const Tensor& inv_freq);

// Causal GQA attention. q [B, T, Hq, D]; k, v [B, Smax, Hkv, D] (a KV cache; the first kv_len rows of
// each batch are valid); query t sits at position q_offset + t and sees keys s <= q_offset + t.
// out [B, T, Hq, D]. Scale 1/sqrt(D); softmax in f32.
void attention_forward(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset,
                       int64_t kv_len);

// out[N, F] = silu(gate) * up.
void swiglu_forward(Tensor& out, const Tensor& gate, const Tensor& up);

// x += y (same shape and dtype).
void add_inplace(Tensor& x, const Tensor& y);

// out = in converted to out's dtype (F32/BF16/F16), same device and element count.
void convert(Tensor& out, const Tensor& in);

}  // namespace qtune
