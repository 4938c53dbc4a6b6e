// SwiGLU's element formula, silu(g) · u = g / (1 + e^-g) · u in f32, shared by swiglu_forward
// (ops/cuda/elementwise.cu) and the 4-bit GEMV that applies it to its gate/up rows (quant/cuda/gemv4.cu), so
// that the two give the same bits.
#pragma once
#include <cuda_runtime.h>

namespace qtune {

__device__ __forceinline__ float silu_mul(float g, float u) {
  return g / (1.0f + __expf(-g)) * u;
}

}  // namespace qtune
