// The CUDA side of train/lora_fused.h (the kernels are in lora_fused.cu); called through the declarations
// there, which check shapes and dispatch by device.
#pragma once
#include "core/tensor.h"
#include "train/lora_fused.h"

namespace qtune {

void lora_down_cuda(Tensor& out, const Tensor& x, const Tensor& w, float scale, const LoraMask* mask);
// One launch for the group when its shapes allow (returns false otherwise: nothing done).
bool lora_down_group_cuda(Tensor* const* outs, const Tensor& x, const Tensor* const* ws,
                          const LoraMask* const* masks, int n);
void lora_down_grad_cuda(Tensor& g, const Tensor& d, const Tensor& x, float scale, const LoraMask* mask,
                         bool g_kr);
void lora_up_dx_cuda(Tensor& dx, const Tensor& d, const Tensor& wt, const LoraMask* mask);
void transpose_into_cuda(Tensor& out, const Tensor& in);

}  // namespace qtune
