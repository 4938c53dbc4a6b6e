// CPU RMSNorm backward (see ops/norm.h for the formula). dx row by row in parallel; dweight summed per
// thread into a private f64 buffer, then added in thread order (deterministic for a fixed thread count).
#include <omp.h>

#include <cmath>
#include <vector>

#include "ops/cpu/backward_ops.h"
#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

void rmsnorm_backward(Tensor& dx, Tensor* dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      float eps) {
  int64_t C = weight.size(0), N = x.numel() / C;
  const float* w = weight.data<float>();
  bool par = N * C >= kParallelMinWork;
  int nt = par ? num_threads() : 1;
  std::vector<std::vector<double>> dw_part(dweight ? nt : 0, std::vector<double>(C, 0.0));
#pragma omp parallel num_threads(nt) if (par)
  {
    double* dwp = dweight ? dw_part[omp_get_thread_num()].data() : nullptr;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) {
      const float* xr = x.data<float>() + n * C;     // [C]
      const float* gr = dout.data<float>() + n * C;  // [C]
      float* dr = dx.data<float>() + n * C;          // [C]
      double ss = 0, dot = 0;                        // Σ x², Σ dout·w·x
      for (int64_t c = 0; c < C; c++) {
        ss += (double)xr[c] * xr[c];
        dot += (double)gr[c] * w[c] * xr[c];
      }
      double r = 1.0 / std::sqrt(ss / C + eps);
      float rf = (float)r, k = (float)(r * r * r * dot / C);
      for (int64_t c = 0; c < C; c++) dr[c] += rf * w[c] * gr[c] - k * xr[c];
      if (dwp)
        for (int64_t c = 0; c < C; c++) dwp[c] += (double)gr[c] * xr[c] * r;
    }
  }
  if (!dweight) return;
  float* dw = dweight->data<float>();
  for (int64_t c = 0; c < C; c++) {
    double s = 0;
    for (int t = 0; t < nt; t++) s += dw_part[t][c];
    dw[c] += (float)s;
  }
}

}  // namespace cpu
}  // namespace qtune
