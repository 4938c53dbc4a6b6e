// Virtual tokens ahead of a prompt, placed as PEFT's prompt-learning methods place them (peft/
// prompt_learning.h builds them from an adapter folder):
//   prompt tuning, P-tuning: embeddings [P, C] fed before the prompt's token embeddings; they take
//     positions 0..P-1 and cache rows 0..P-1;
//   prefix tuning: per-layer key/value rows [P, Hkv·D] written into cache rows 0..P-1 of every layer and
//     used as they are (no RoPE: PEFT hands them to the model as past_key_values).
// Either way the prompt's first token sits at position P (PEFT: cache_position after the P rows) and every
// later token sees the P rows, so decoding continues with LlamaModel::forward / DecodeStep at pos P + T.
//
//   VirtualTokens vt = prompt_adapter.virtual_tokens();
//   KVCache cache = model.make_cache(1, vt.count() + T + new_tokens);
//   Tensor logits = forward_with_virtual_tokens(model, ids, cache, vt, true);   // [1, 1, V]
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/kv_cache.h"
#include "model/llama_model.h"

namespace qtune {

struct VirtualTokens {
  Tensor embeds;                     // F32 [P, C] (prompt tuning, P-tuning), or undefined
  std::vector<Tensor> keys, values;  // per layer [P, Hkv·D] (prefix tuning), any dtype/device, or empty
  int64_t count() const;             // P (0: none)
};

// Throws ErrorKind::Shape when vt does not fit the model (hidden size, layers, kv width), naming `what`.
void check_virtual_tokens(const LlamaModel& model, const VirtualTokens& vt, const std::string& what);

// Writes the prefix rows into cache rows [0, P) of every layer and batch row (prefix tuning; nothing for
// embeddings).
void write_prefix(KVCache& cache, const LlamaModel& model, const VirtualTokens& vt);

// Prefill of ids I32 [B, T] behind the virtual tokens into cache rows [0, P + T). Returns the logits of
// the real tokens F32 [B, T, V] (or of the last one, [B, 1, V], when last_only).
Tensor forward_with_virtual_tokens(const LlamaModel& model, const Tensor& ids, KVCache& cache,
                                   const VirtualTokens& vt, bool last_only = false);

}  // namespace qtune
