// dora_ops: shape checks, device dispatch and the CPU loops (see dora_ops.h).
#include "peft/dora_ops.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "model/quant_linear.h"
#include "ops/matmul.h"
#ifdef QTUNE_HAVE_CUDA
#include "peft/cuda/dora_ops_cuda.h"
#endif

namespace qtune {

namespace {

void require_f32_vec(const Tensor& t, int64_t n, const char* op, const char* name) {
  if (t.dtype() != DType::F32 || t.numel() != n)
    throw_error(ErrorKind::Shape, op, ": ", name, " must be an F32 vector of ", n, ", got ", t.describe());
}

void require_device(const Tensor& t, Device dev, const char* op, const char* name) {
  if (t.device() != dev)
    throw_error(ErrorKind::Shape, op, ": ", name, " ", t.describe(), " is on another device than the rest");
}

// bias[o] as f32 (CPU F32 only; the CUDA kernels read BF16 too).
float bias_at(const Tensor* bias, int64_t o) {
  return bias ? bias->data<float>()[o] : 0.0f;
}

}  // namespace

Tensor dora_dense_weight(const Linear& base) {
  const int64_t O = base.out_features(), I = base.in_features();
  if (!base.quantized()) return base.weight;
  const bool cuda = base.q4 ? base.q4->on_cuda() : base.q8->on_cuda();
  if (cuda) {
#ifdef QTUNE_HAVE_CUDA
    Tensor w = Tensor::empty({O, I}, DType::BF16, Device::CUDA);
    if (base.q4)
      quant4_dequantize_rows_cuda(w, *base.q4, 0, O);
    else
      int8_dequantize_rows_cuda(w, *base.q8, 0, O);
    return w;
#endif
  }
  if (base.q4) return quant4_linear_dense(*base.q4);
  Tensor w = Tensor::empty({O, I}, DType::F32);  // LLM.int8: q · SCB / 127, as the outlier columns use it
  const int8_t* q = base.q8->w.q.data<int8_t>();
  const float* s = base.q8->w.scale.data<float>();
  float* p = w.data<float>();
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) p[o * I + i] = ((float)q[o * I + i] * s[o]) * 7.874015718698502e-3f;
  return w;
}

void dora_weight_norm(Tensor& norm, const Tensor& w, const Tensor& a, const Tensor& b, float scale) {
  const char* op = "dora_weight_norm";
  if (w.ndim() != 2 || a.ndim() != 2 || b.ndim() != 2 || a.size(1) != w.size(1) || b.size(0) != w.size(0) ||
      b.size(1) != a.size(0) || a.dtype() != DType::F32 || b.dtype() != DType::F32)
    throw_error(ErrorKind::Shape, op, ": weight ", w.describe(), ", A ", a.describe(), " and B ", b.describe(),
                " do not form W + s·B·A (A, B F32)");
  const int64_t O = w.size(0), I = w.size(1);
  require_f32_vec(norm, O, op, "norm");
  for (const Tensor* t : {&a, &b, (const Tensor*)&norm}) require_device(*t, w.device(), op, "a tensor");
  if (w.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    return dora_weight_norm_cuda(norm, w, a, b, scale);
#endif
  }
  if (w.dtype() != DType::F32) throw_error(ErrorKind::Shape, op, ": a CPU weight must be F32, got ", w.describe());
  Tensor delta = Tensor::empty({O, I}, DType::F32);
  matmul(delta, b, a, false, false, scale, 0.0f);  // s·B·A [O, I]
  const float* wp = w.data<float>();
  const float* dp = delta.data<float>();
  float* np = norm.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < O; ++o) {
    double sq = 0;
    for (int64_t i = 0; i < I; ++i) {
      const float v = wp[o * I + i] + dp[o * I + i];
      sq += (double)v * v;
    }
    np[o] = (float)std::sqrt(sq);
  }
}

void dora_scale(Tensor& d, const Tensor& m, const Tensor& norm, float offset) {
  const char* op = "dora_scale";
  const int64_t O = norm.numel();
  require_f32_vec(d, O, op, "d");
  require_f32_vec(m, O, op, "magnitude");
  require_f32_vec(norm, O, op, "norm");
  require_device(d, norm.device(), op, "d");
  require_device(m, norm.device(), op, "magnitude");
  if (norm.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    return dora_scale_cuda(d, m, norm, offset);
#endif
  }
  for (int64_t o = 0; o < O; ++o) d.data<float>()[o] = m.data<float>()[o] / norm.data<float>()[o] + offset;
}

void dora_combine(Tensor& out, const Tensor& t, const Tensor& u, const Tensor& d, const Tensor* bias) {
  const char* op = "dora_combine";
  const int64_t O = out.size(-1);
  if (t.numel() != out.numel() || t.size(-1) != O || t.dtype() != out.dtype() || u.numel() != out.numel() ||
      u.size(-1) != O || u.dtype() != DType::F32)
    throw_error(ErrorKind::Shape, op, ": out ", out.describe(), ", t ", t.describe(), " (like out) and F32 u ",
                u.describe(), " do not fit");
  require_f32_vec(d, O, op, "d");
  if (bias && bias->numel() != O)
    throw_error(ErrorKind::Shape, op, ": bias ", bias->describe(), " is not [", O, "]");
  for (const Tensor* x : {&t, &u, &d}) require_device(*x, out.device(), op, "a tensor");
  if (bias) require_device(*bias, out.device(), op, "bias");
  if (out.numel() == 0) return;
  if (out.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    return dora_combine_cuda(out, t, u, d, bias);
#endif
  }
  if (out.dtype() != DType::F32 || (bias && bias->dtype() != DType::F32))
    throw_error(ErrorKind::Shape, op, ": CPU tensors must be F32 (out ", out.describe(), ")");
  const int64_t N = out.numel() / O;
  float* y = out.data<float>();
  const float* tp = t.data<float>();
  const float* up = u.data<float>();
  const float* dp = d.data<float>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) {
      const int64_t k = n * O + o;
      y[k] += (dp[o] - 1.0f) * (tp[k] - bias_at(bias, o)) + dp[o] * up[k];
    }
}

void dora_magnitude_grad(Tensor& gm, const Tensor& cy, const Tensor* cdy, const Tensor* bias, const Tensor& p,
                         const Tensor& b, float scale, const Tensor& norm) {
  const char* op = "dora_magnitude_grad";
  const int64_t O = norm.numel();
  require_f32_vec(gm, O, op, "gm");
  require_f32_vec(cy, O, op, "cy");
  if (bias && !cdy) throw_error(ErrorKind::Shape, op, ": a bias needs the column sums of dy (cdy)");
  if (cdy) require_f32_vec(*cdy, O, op, "cdy");
  if (bias && bias->numel() != O) throw_error(ErrorKind::Shape, op, ": bias ", bias->describe(), " is not [", O, "]");
  if (p.ndim() != 2 || p.size(0) != O || p.shape() != b.shape() || p.dtype() != DType::F32 ||
      b.dtype() != DType::F32)
    throw_error(ErrorKind::Shape, op, ": p ", p.describe(), " and B ", b.describe(), " must be F32 [", O, ", r]");
  for (const Tensor* x : {&cy, &p, &b, &norm}) require_device(*x, gm.device(), op, "a tensor");
  if (gm.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    return dora_magnitude_grad_cuda(gm, cy, bias ? cdy : nullptr, bias, p, b, scale, norm);
#endif
  }
  if (bias && bias->dtype() != DType::F32)
    throw_error(ErrorKind::Shape, op, ": a CPU bias must be F32, got ", bias->describe());
  const int64_t r = p.size(1);
  float* g = gm.data<float>();
  for (int64_t o = 0; o < O; ++o) {
    double acc = cy.data<float>()[o];
    if (bias) acc -= (double)bias_at(bias, o) * cdy->data<float>()[o];
    double lora = 0;
    for (int64_t k = 0; k < r; ++k) lora += (double)b.data<float>()[o * r + k] * p.data<float>()[o * r + k];
    g[o] += (float)((acc + scale * lora) / norm.data<float>()[o]);
  }
}

}  // namespace qtune
