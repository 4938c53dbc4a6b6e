// CPU Linear backward through a dense f32 weight, as two GEMMs through cpu::matmul (OpenBLAS, split over
// the OpenMP threads): dx[N, I] += dy[N, O]·w[O, I];  dw[O, I] += dy[N, O]ᵀ·x[N, I];  db[O] += Σ_n dy[n].
#include <omp.h>

#include <vector>

#include "ops/cpu/backward_ops.h"
#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x, const Tensor& w) {
  int64_t O = w.size(0), I = w.size(1), N = x.numel() / I;
  Tensor dy2 = dy.reshape({N, O});  // [N, O]
  if (dx) {
    Tensor dx2 = dx->reshape({N, I});  // [N, I]
    matmul(dx2, dy2, w, false, false, 1.0f, 1.0f);
  }
  if (dw) matmul(*dw, dy2, x.reshape({N, I}), true, false, 1.0f, 1.0f);
  if (db) {
    const float* g = dy.data<float>();
    float* b = db->data<float>();
#pragma omp parallel for schedule(static) if (N * O >= kParallelMinWork)
    for (int64_t o = 0; o < O; o++) {
      double s = 0;
      for (int64_t n = 0; n < N; n++) s += g[n * O + o];
      b[o] += (float)s;
    }
  }
}

}  // namespace cpu
}  // namespace qtune
