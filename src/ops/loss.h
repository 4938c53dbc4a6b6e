// Cross-entropy of a causal LM head, computed in chunks of rows so the full [N, V] f32 logits never
// exist (only [chunk, V] at a time): for each row n with label y ≠ −100,
//   loss_n = logsumexp_v(h[n]·W[v]) − h[n]·W[y].
// Labels follow Hugging Face: I32, −100 = ignored, already shifted by the caller (label n is the token
// that row n predicts). The summed loss and the number of counted rows come back; the trainer divides
// by the total count over all micro-batches of a step and passes 1/total as grad_scale, so gradient
// accumulation equals one large batch.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace qtune {

struct LossSum {
  double loss = 0;    // Σ over counted rows of −log p(label)
  int64_t count = 0;  // rows whose label is not −100
};

constexpr int32_t kIgnoreIndex = -100;

// hidden [N, C] (any leading shape), lm_head [V, C], labels I32 [N]. When dhidden / dlm_head are non-null,
// accumulates grad_scale · d(loss)/d(hidden) [N, C] and grad_scale · d(loss)/d(lm_head) [V, C] into them
// (rows with ignored labels get nothing). chunk_rows: rows per logits chunk (>= 1). A label outside
// [0, V) other than −100 throws ErrorKind::Shape naming its row. CPU: all F32. CUDA: hidden and lm_head
// BF16 (or F32), labels on either device, dhidden F32/BF16, dlm_head F32.
LossSum cross_entropy_forward_backward(const Tensor& hidden, const Tensor& lm_head, const Tensor& labels,
                                       Tensor* dhidden, Tensor* dlm_head, float grad_scale = 1.0f,
                                       int64_t chunk_rows = 256);

}  // namespace qtune
