// float64 references of train/lora_fused.h for its CPU and CUDA tests: the products written as plain loops,
// the mask through lora_mask_keeps, inputs read as F32 CPU tensors.
#pragma once
#include <vector>

#include "core/tensor.h"
#include "train/lora_fused.h"

namespace qtune_test {

// (m ⊙ x) element i of x as double.
inline double masked_at(const float* x, const qtune::LoraMask* m, int64_t i) {
  if (!m) return x[i];
  return qtune::lora_mask_keeps(*m, (uint64_t)i) ? (double)x[i] * m->keep : 0.0;
}

// out[N, r] = scale·(m ⊙ x)·wᵀ
inline std::vector<double> ref_lora_down(const qtune::Tensor& x, const qtune::Tensor& w, float scale,
                                         const qtune::LoraMask* m) {
  const int64_t N = x.size(0), K = x.size(1), r = w.size(0);
  const float *xp = x.data<float>(), *wp = w.data<float>();
  std::vector<double> out(N * r);
#pragma omp parallel for
  for (int64_t n = 0; n < N; n++)
    for (int64_t j = 0; j < r; j++) {
      double s = 0;
      for (int64_t k = 0; k < K; k++) s += masked_at(xp, m, n * K + k) * wp[j * K + k];
      out[n * r + j] = scale * s;
    }
  return out;
}

// g + scale·dᵀ·(m ⊙ x), as g [r, K] or [K, r] (g_kr)
inline std::vector<double> ref_lora_down_grad(const qtune::Tensor& g, const qtune::Tensor& d,
                                              const qtune::Tensor& x, float scale, const qtune::LoraMask* m,
                                              bool g_kr) {
  const int64_t N = x.size(0), K = x.size(1), r = d.size(1);
  const float *xp = x.data<float>(), *dp = d.data<float>(), *gp = g.data<float>();
  std::vector<double> out(r * K);
#pragma omp parallel for
  for (int64_t k = 0; k < K; k++)
    for (int64_t j = 0; j < r; j++) {
      double s = 0;
      for (int64_t n = 0; n < N; n++) s += (double)dp[n * r + j] * masked_at(xp, m, n * K + k);
      const int64_t i = g_kr ? k * r + j : j * K + k;
      out[i] = gp[i] + scale * s;
    }
  return out;
}

// dx + m ⊙ (d·wtᵀ)
inline std::vector<double> ref_lora_up_dx(const qtune::Tensor& dx, const qtune::Tensor& d,
                                          const qtune::Tensor& wt, const qtune::LoraMask* m) {
  const int64_t N = dx.size(0), K = dx.size(1), r = d.size(1);
  const float *dp = d.data<float>(), *wp = wt.data<float>(), *xp = dx.data<float>();
  std::vector<double> out(N * K);
#pragma omp parallel for
  for (int64_t n = 0; n < N; n++)
    for (int64_t k = 0; k < K; k++) {
      double s = 0;
      for (int64_t j = 0; j < r; j++) s += (double)dp[n * r + j] * wp[k * r + j];
      const bool keep = !m || qtune::lora_mask_keeps(*m, (uint64_t)(n * K + k));
      out[n * K + k] = xp[n * K + k] + (keep ? s * (m ? m->keep : 1.0f) : 0.0);
    }
  return out;
}

}  // namespace qtune_test
