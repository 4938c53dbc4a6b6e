// Elementwise ops: the residual add and dtype conversion (f32 <-> bf16/f16) on one device.
#pragma once
#include "core/tensor.h"

namespace qtune {

// x += y (same element count; the same dtype on the CPU, any F32/BF16/F16 pair on CUDA, summed in f32).
void add_inplace(Tensor& x, const Tensor& y);

// out = in converted to out's dtype (F32/BF16/F16), same device and element count.
void convert(Tensor& out, const Tensor& in);

}  // namespace qtune
