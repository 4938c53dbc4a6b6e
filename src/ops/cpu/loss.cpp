// CPU chunked cross-entropy (see ops/loss.h): for each chunk of R rows, logits [R, V] = h·Wᵀ (sgemm),
// per row the log-sum-exp (max-shifted, f64 sum) and the loss; then the logits buffer is overwritten by
// grad_scale·(softmax − onehot(label)) (zero rows for ignored labels) and two GEMMs accumulate
// dh[R, C] += dlogits·W and dW[V, C] += dlogitsᵀ·h. Only one [R, V] buffer ever exists.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/backward_ops.h"
#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

LossSum cross_entropy_forward_backward(const Tensor& hidden, const Tensor& lm_head, const Tensor& labels,
                                       Tensor* dhidden, Tensor* dlm_head, float grad_scale,
                                       int64_t chunk_rows) {
  int64_t V = lm_head.size(0), C = lm_head.size(1), N = hidden.numel() / C;
  const int32_t* y = labels.data<int32_t>();
  Tensor h2 = hidden.reshape({N, C});
  Tensor dh2 = dhidden ? dhidden->reshape({N, C}) : Tensor();
  bool grads = dhidden || dlm_head;
  int64_t R = std::min(std::max<int64_t>(1, chunk_rows), std::max<int64_t>(1, N));
  Tensor buf = Tensor::empty({R, V}, DType::F32);
  LossSum total;
  for (int64_t n0 = 0; n0 < N; n0 += R) {
    int64_t rows = std::min(R, N - n0);
    bool any = false;
    for (int64_t r = 0; r < rows; r++) any |= y[n0 + r] != kIgnoreIndex;
    if (!any) continue;                   // every label ignored: no loss, no gradient
    Tensor hc = h2.slice0(n0, rows);      // [rows, C]
    Tensor logits = buf.slice0(0, rows);  // [rows, V]
    matmul(logits, hc, lm_head, false, true, 1.0f, 0.0f);
    std::vector<double> row_loss(rows, 0.0);
    float* lg = logits.data<float>();
#pragma omp parallel for schedule(static) if (rows * V >= kParallelMinWork)
    for (int64_t r = 0; r < rows; r++) {
      float* z = lg + r * V;  // [V]
      int32_t label = y[n0 + r];
      if (label == kIgnoreIndex) {
        std::fill(z, z + V, 0.0f);
        continue;
      }
      float mx = *std::max_element(z, z + V);
      double sum = 0;
      for (int64_t j = 0; j < V; j++) sum += std::exp((double)(z[j] - mx));
      double lse = mx + std::log(sum);
      row_loss[r] = lse - z[label];
      if (!grads) continue;
      for (int64_t j = 0; j < V; j++) z[j] = grad_scale * (float)std::exp(z[j] - lse);
      z[label] -= grad_scale;
    }
    for (int64_t r = 0; r < rows; r++)
      if (y[n0 + r] != kIgnoreIndex) {
        total.loss += row_loss[r];
        total.count++;
      }
    if (dhidden) {
      Tensor dhc = dh2.slice0(n0, rows);  // [rows, C]
      matmul(dhc, logits, lm_head, false, false, 1.0f, 1.0f);
    }
    if (dlm_head) matmul(*dlm_head, logits, hc, true, false, 1.0f, 1.0f);
  }
  return total;
}

}  // namespace cpu
}  // namespace qtune
