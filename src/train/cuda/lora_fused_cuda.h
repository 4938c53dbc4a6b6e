// The CUDA side of train/lora_fused.h (the kernels are in lora_fused.cu); called through the declarations
// there, which check shapes and dispatch by device.
#pragma once
#include "core/tensor.h"
#include "train/lora_fused.h"

namespace qtune {

void lora_down_cuda(Tensor& out, const Tensor& x, const Tensor& w, float scale, const LoraMask* mask);
void lora_down_grad_cuda(Tensor& g, const Tensor& d, const Tensor& x, float scale, const LoraMask* mask,
                         bool g_kr);
void lora_up_dx_cuda(Tensor& dx, const Tensor& d, const Tensor& wt, const LoraMask* mask);
void transpose_into_cuda(Tensor& out, const Tensor& in);

}  // namespace qtune
