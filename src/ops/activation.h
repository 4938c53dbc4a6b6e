// The gated MLP activation of the Llama family: SwiGLU = silu(gate) * up, silu(x) = x / (1 + e^-x).
#pragma once
#include "core/tensor.h"

namespace qtune {

// out[N, F] = silu(gate[N, F]) * up[N, F].
void swiglu_forward(Tensor& out, const Tensor& gate, const Tensor& up);

// Backward: with s = sigmoid(gate), silu'(gate) = s·(1 + gate·(1 − s)),
//   dgate += dout·up·silu'(gate),   dup += dout·silu(gate)   (accumulated),
// or, with accumulate false, dgate and dup overwritten (their old contents never read: no zero-fill needed).
void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up,
                     bool accumulate = true);

}  // namespace qtune
