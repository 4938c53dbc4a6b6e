// Rotary position embedding, Hugging Face's rotate_half convention: the head dim is split into halves
// (x1 = x[:D/2], x2 = x[D/2:]) rather than interleaved pairs. The inverse frequencies (with any rope
// scaling) are computed by the model (model/rope_freq.h) and passed in.
#pragma once
#include "core/tensor.h"

namespace qtune {

// In place on x[N, H, D]: with a = positions[n] * inv_freq[i], i < D/2,
//   x1' = x1·cos a − x2·sin a,   x2' = x2·cos a + x1·sin a.
// positions: I32 [N]; inv_freq: F32 [D/2] (both on x's device).
void rope_forward(Tensor& x, const Tensor& positions, const Tensor& inv_freq);

// Backward, in place on dx[N, H, D] (the gradient of the rotated tensor → of the input): the rotation is
// orthogonal, so its transpose is the rotation by −a: x1 = x1'·cos a + x2'·sin a, x2 = x2'·cos a − x1'·sin a.
void rope_backward(Tensor& dx, const Tensor& positions, const Tensor& inv_freq);

}  // namespace qtune
