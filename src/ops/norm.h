// RMSNorm as Hugging Face's LlamaRMSNorm computes it: normalise in f32, then multiply by the weight.
#pragma once
#include "core/tensor.h"

namespace qtune {

// out[N, C] = x / sqrt(mean(x²) + eps) * weight[C]. x and out share a shape (last dim C).
void rmsnorm_forward(Tensor& out, const Tensor& x, const Tensor& weight, float eps);

}  // namespace qtune
