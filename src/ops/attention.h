// Causal grouped-query attention over a KV cache. Extra leading KV rows (a prefix, as prefix tuning
// adds) fit the same call: they are cache rows before q_offset that every query sees.
#pragma once
#include "core/tensor.h"

namespace qtune {

// q [B, T, Hq, D]; k, v [B, Smax, Hkv, D] (a KV cache; the first kv_len rows of each batch are valid);
// Hq a multiple of Hkv (query head h reads kv head h / (Hq/Hkv)). Query t sits at position q_offset + t
// and sees keys s <= q_offset + t (and s < kv_len). out [B, T, Hq, D]. Scale 1/sqrt(D); softmax in f32.
// Requires q_offset + T <= kv_len <= Smax.
void attention_forward(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset,
                       int64_t kv_len);

// Training attention: whole sequences, no cache. q [B, T, Hq, D]; k, v [B, T, Hkv, D]; query t sees keys
// s <= t. With seq_ids (I32 [B, T], optional, equal ids in contiguous runs: packed examples) it sees only
// keys of its own run. out [B, T, Hq, D]; lse F32 [B, T, Hq] the log-sum-exp of the scaled scores of
// each row (what backward needs to recompute the probabilities without storing them). CPU F32.
void attention_forward_train(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor* seq_ids = nullptr);

// Backward of attention_forward_train from the saved q, k, v, out and lse (the T×T probabilities are
// recomputed per row, never stored): with p = exp(q·k/√D − lse), Δ = Σ_d dout·out,
//   dv_s += p_s·dout,  ds_s = p_s·(dout·v_s − Δ),  dq += Σ_s ds_s·k_s/√D,  dk_s += ds_s·q/√D,
// dk/dv summed over the query heads of each group. Gradients accumulate (+=). seq_ids as in forward.
void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor* seq_ids = nullptr);

// Prefix rows for training attention (prefix tuning): P key/value rows per sequence that every query sees
// besides its own causal keys (unmasked, not rotated: PEFT hands them to the model as past_key_values),
// and where attention_backward_prefix accumulates their gradients.
struct AttentionPrefix {
  Tensor k, v;           // [B, P, Hkv, D], q's dtype and device
  Tensor* dk = nullptr;  // [B, P, Hkv, D] (+=) in the dtype of the dk given to the backward; null: not wanted
  Tensor* dv = nullptr;
};

// attention_forward_train / attention_backward with prefix rows, on the CPU and CUDA: the prefix is run as
// the first P keys of a causal sequence of P + T rows whose first P queries are zeros (their outputs are
// dropped, their gradients are zero), so both reuse the kernels above at the cost of copying q, k, v.
// out, lse, dq, dk, dv as there (for the T real rows). With seq_ids the prefix rows join the first packed
// example of each row only (the others do not see them); rows of one example plus padding are exact.
void attention_forward_train_prefix(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const AttentionPrefix& prefix,
                                    const Tensor* seq_ids = nullptr);
void attention_backward_prefix(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                               const AttentionPrefix& prefix, const Tensor* seq_ids = nullptr);

}  // namespace qtune
