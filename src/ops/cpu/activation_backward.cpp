// CPU SwiGLU backward: with s = sigmoid(g), silu(g) = g·s, silu'(g) = s·(1 + g·(1 − s));
// dgate += dout·up·silu'(g), dup += dout·silu(g) (or = when not accumulating).
#include <cmath>

#include "ops/cpu/backward_ops.h"
#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up,
                     bool accumulate) {
  int64_t n = gate.numel();
  const float* g = gate.data<float>();
  const float* u = up.data<float>();
  const float* d = dout.data<float>();
  float* dg = dgate.data<float>();
  float* du = dup.data<float>();
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (int64_t i = 0; i < n; i++) {
    float s = 1.0f / (1.0f + std::exp(-g[i]));
    const float a = accumulate ? dg[i] : 0.0f, b = accumulate ? du[i] : 0.0f;
    dg[i] = a + d[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
    du[i] = b + d[i] * g[i] * s;
  }
}

}  // namespace cpu
}  // namespace qtune
