// CPU SwiGLU: out = silu(gate) * up, silu(g) = g / (1 + e^-g).
#include <cmath>

#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

void swiglu_forward(Tensor& out, const Tensor& gate, const Tensor& up) {
  int64_t n = gate.numel();
  const float* g = gate.data<float>();
  const float* u = up.data<float>();
  float* o = out.data<float>();
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (int64_t i = 0; i < n; i++) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

}  // namespace cpu
}  // namespace qtune
