// LLM.int8 building blocks on the CPU, following bitsandbytes' reference (torch) backend:
//   row-wise quantization  scale[r] = max_c |x[r, c]| over the non-outlier elements (SCB / SCA),
//                          q[r, c] = round_half_even(x[r, c] * (127 / scale[r])) as int8,
//   outliers               with threshold > 0, columns holding any |x| >= threshold; their int8 values are 0
//                          and the matmul computes them from the original x in f32,
//   int8 linear            y = (q_x @ q_w^T) * (scale_x * scale_w / 127^2) + x[:, out] @ deq(w)[:, out]^T +
//   b.
// This is the CPU path and the reference for the CUDA kernels.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace qtune {

struct Int8Rowwise {
  Tensor q;                           // I8 [rows, cols]
  Tensor scale;                       // F32 [rows], the row absmax (bitsandbytes' SCB)
  std::vector<int64_t> outlier_cols;  // ascending; empty without a threshold
};

// x: CPU F32/BF16/F16 [rows, cols] (more dims are flattened into rows). threshold 0 = no outliers.
// A row whose scale is 0 quantizes to zeros.
Int8Rowwise int8_vectorwise_quant(const Tensor& x, float threshold = 0.0f);
// q * scale / 127 as F32 [rows, cols].
Tensor int8_vectorwise_dequant(const Int8Rowwise& q);

// y[M, N] (F32) = x[M, K] @ w^T with w the int8 weight [N, K] (quantized without threshold, as
// bitsandbytes stores it), LLM.int8 decomposition at `threshold`; bias: F32/BF16/F16 [N] or undefined.
Tensor int8_linear(const Tensor& x, const Int8Rowwise& w, float threshold, const Tensor& bias = Tensor());

}  // namespace qtune
