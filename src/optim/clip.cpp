// clip_grad_norm: see clip.h.
#include "optim/clip.h"

#include <cmath>

#include "core/error.h"
#ifdef QTUNE_HAVE_CUDA
#include "optim/cuda/clip_cuda.h"
#endif

namespace qtune {

float grad_global_norm(const std::vector<ParamGroup>& groups) {
  double total_sq = 0.0;
  std::vector<float*> dev_x;  // GPU gradients: summed in one batch below
  std::vector<int64_t> dev_n;
  for (const ParamGroup& g : groups) {
    for (const ParamRef& p : g.params) {
      if (!p.grad.defined()) continue;
      if (p.grad.dtype() != DType::F32)
        throw_error(ErrorKind::Unsupported, "clip_grad_norm: gradient of '", p.name, "' is ",
                    p.grad.describe(), ", expected F32");
      if (p.grad.is_cuda()) {
        dev_x.push_back(p.grad.data<float>());
        dev_n.push_back(p.grad.numel());
        continue;
      }
      const float* x = p.grad.data<float>();
      const int64_t n = p.grad.numel();
      double sq = 0.0;
#pragma omp parallel for reduction(+ : sq) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) sq += (double)x[i] * (double)x[i];
      const float norm = (float)std::sqrt(sq);  // torch: one f32 norm per tensor
      total_sq += (double)norm * (double)norm;
    }
  }
#ifdef QTUNE_HAVE_CUDA
  for (double sq : sum_squares_cuda(dev_x, dev_n)) {
    const float norm = (float)std::sqrt(sq);
    total_sq += (double)norm * (double)norm;
  }
#endif
  return (float)std::sqrt(total_sq);
}

float clip_grad_norm(std::vector<ParamGroup>& groups, double max_norm) {
  const float total = grad_global_norm(groups);
  const float coef = (float)max_norm / (total + 1e-6f);
  const float clamped = coef < 1.0f ? coef : 1.0f;
  if (clamped == 1.0f) return total;  // torch multiplies by 1.0: the gradients stay bit for bit
  std::vector<float*> dev_x;
  std::vector<int64_t> dev_n;
  for (ParamGroup& g : groups) {
    for (ParamRef& p : g.params) {
      if (!p.grad.defined()) continue;
      float* x = p.grad.data<float>();
      const int64_t n = p.grad.numel();
      if (p.grad.is_cuda()) {
        dev_x.push_back(x);
        dev_n.push_back(n);
        continue;
      }
#pragma omp parallel for if (n > 65536)
      for (int64_t i = 0; i < n; ++i) x[i] = x[i] * clamped;
    }
  }
#ifdef QTUNE_HAVE_CUDA
  if (!dev_x.empty()) scale_cuda(dev_x, dev_n, clamped);
#endif
  return total;
}

}  // namespace qtune
