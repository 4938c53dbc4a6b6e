// CUDA implementations of peft/adapter_ops.h (called by its device dispatch; arguments already checked
// for shapes there).
#pragma once
#include "core/tensor.h"
#include "peft/adapter_ops.h"

namespace qtune {

void scale_columns_cuda(Tensor& out, const Tensor& x, const Tensor& s);
void scale_columns_backward_cuda(Tensor* dx, Tensor* ds, const Tensor& g, const Tensor* x, const Tensor* s);
void adapter_act_forward_cuda(Tensor& a, const Tensor& z, AdapterAct act);
void adapter_act_backward_cuda(Tensor& dz, const Tensor& da, const Tensor& z, AdapterAct act);

}  // namespace qtune
