// CUDA implementations of peft/dora_ops.h (called by its device dispatch; arguments already checked there).
#pragma once
#include "core/tensor.h"

namespace qtune {

void dora_weight_norm_cuda(Tensor& norm, const Tensor& w, const Tensor& a, const Tensor& b, float scale);
void dora_scale_cuda(Tensor& d, const Tensor& m, const Tensor& norm, float offset);
void dora_combine_cuda(Tensor& out, const Tensor& t, const Tensor& u, const Tensor& d, const Tensor* bias);
void dora_magnitude_grad_cuda(Tensor& gm, const Tensor& cy, const Tensor* cdy, const Tensor* bias,
                              const Tensor& p, const Tensor& b, float scale, const Tensor& norm);

}  // namespace qtune
