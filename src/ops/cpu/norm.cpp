// CPU RMSNorm: out[n, :] = x[n, :] / sqrt(mean(x[n, :]²) + eps) * weight (f64 sum of squares).
// out may alias x.
#include <cmath>

#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

void rmsnorm_forward(Tensor& out, const Tensor& x, const Tensor& weight, float eps) {
  int64_t C = weight.size(0), N = x.numel() / C;
  const float* w = weight.data<float>();
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinWork)
  for (int64_t n = 0; n < N; n++) {
    const float* xr = x.data<float>() + n * C;  // [C]
    float* o = out.data<float>() + n * C;       // [C]
    double ss = 0;
    for (int64_t c = 0; c < C; c++) ss += (double)xr[c] * xr[c];
    float r = (float)(1.0 / std::sqrt(ss / C + eps));
    for (int64_t c = 0; c < C; c++) o[c] = xr[c] * r * w[c];
  }
}

}  // namespace cpu
}  // namespace qtune
