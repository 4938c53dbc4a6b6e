// RMSNorm as Hugging Face's LlamaRMSNorm computes it: normalise in f32, then multiply by the weight.
#pragma once
#include "core/tensor.h"

namespace qtune {

// out[N, C] = x / sqrt(mean(x²) + eps) * weight[C]. x and out share a shape (last dim C).
void rmsnorm_forward(Tensor& out, const Tensor& x, const Tensor& weight, float eps);

// Backward of rmsnorm_forward, from the saved input x: with r = 1/sqrt(mean(x²) + eps) per row,
//   dx[n, c] += r·w[c]·dout[n, c] − x[n, c]·r³/C · Σ_j dout[n, j]·w[j]·x[n, j],
//   dweight[c] += Σ_n dout[n, c]·x[n, c]·r  (only when dweight is non-null).
// Like every *_backward op, gradients are accumulated (+=): the caller zeroes them.
void rmsnorm_backward(Tensor& dx, Tensor* dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      float eps);

}  // namespace qtune
