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

}  // namespace qtune
