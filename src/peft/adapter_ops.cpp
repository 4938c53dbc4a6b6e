// adapter_ops: shape checks, device dispatch and the CPU loops (see adapter_ops.h).
#include "peft/adapter_ops.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#ifdef QTUNE_HAVE_CUDA
#include "peft/cuda/adapter_ops_cuda.h"
#endif

namespace qtune {

namespace {

// Columns J of a [.., J] tensor.
int64_t cols(const Tensor& t) {
  return t.ndim() == 0 ? 1 : t.size(-1);
}

void require_cpu_f32(const Tensor& t, const char* op, const char* name) {
  if (t.device() != Device::CPU || t.dtype() != DType::F32)
    throw_error(ErrorKind::Shape, op, ": ", name, " must be CPU F32 here, got ", t.describe());
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  if (a.device() != b.device())
    throw_error(ErrorKind::Shape, op, ": tensors on different devices (", a.describe(), ", ", b.describe(),
                ")");
}

const float kSqrtHalf = 0.70710678118654752f;
const float kInvSqrt2Pi = 0.39894228040143268f;

}  // namespace

void scale_columns(Tensor& out, const Tensor& x, const Tensor& s) {
  const char* op = "scale_columns";
  const int64_t J = cols(x);
  if (out.numel() != x.numel() || cols(out) != J || s.numel() != J || s.dtype() != DType::F32)
    throw_error(ErrorKind::Shape, op, ": out ", out.describe(), ", x ", x.describe(), " and F32 s [", J,
                "] do not fit (s is ", s.describe(), ")");
  check_same_device(out, x, op);
  check_same_device(s, x, op);
  if (x.numel() == 0) return;
  if (x.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    return scale_columns_cuda(out, x, s);
#endif
  }
  require_cpu_f32(out, op, "out");
  require_cpu_f32(x, op, "x");
  const int64_t N = x.numel() / J;
  const float* xp = x.data<float>();
  const float* sp = s.data<float>();
  float* o = out.data<float>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < J; ++j) o[n * J + j] = xp[n * J + j] * sp[j];
}

void scale_columns_backward(Tensor* dx, Tensor* ds, const Tensor& g, const Tensor* x, const Tensor* s) {
  const char* op = "scale_columns_backward";
  const int64_t J = cols(g);
  auto fits = [&](const Tensor* t, bool vec) {
    if (!t) return;
    if ((vec ? t->numel() != J : t->numel() != g.numel() || cols(*t) != J) ||
        (vec && t->dtype() != DType::F32))
      throw_error(ErrorKind::Shape, op, ": ", t->describe(), " does not fit g ", g.describe(),
                  vec ? " (expected an F32 vector of its columns)" : "");
    check_same_device(*t, g, op);
  };
  fits(dx, false);
  fits(x, false);
  fits(ds, true);
  fits(s, true);
  if (g.numel() == 0) return;
  if (g.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    return scale_columns_backward_cuda(dx, ds, g, x, s);
#endif
  }
  require_cpu_f32(g, op, "g");
  const int64_t N = g.numel() / J;
  const float* gp = g.data<float>();
  if (dx) {
    require_cpu_f32(*dx, op, "dx");
    float* d = dx->data<float>();
    const float* sp = s ? s->data<float>() : nullptr;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < J; ++j) d[n * J + j] += sp ? gp[n * J + j] * sp[j] : gp[n * J + j];
  }
  if (ds) {
    require_cpu_f32(*ds, op, "ds");
    if (x) require_cpu_f32(*x, op, "x");
    const float* xp = x ? x->data<float>() : nullptr;
    std::vector<double> acc(J, 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < J; ++j) acc[j] += xp ? (double)gp[n * J + j] * xp[n * J + j] : gp[n * J + j];
    float* d = ds->data<float>();
    for (int64_t j = 0; j < J; ++j) d[j] += (float)acc[j];
  }
}

AdapterAct adapter_act_from_name(const std::string& name, const std::string& context) {
  if (name == "relu") return AdapterAct::Relu;
  if (name == "silu" || name == "swish") return AdapterAct::Silu;
  if (name == "gelu") return AdapterAct::Gelu;
  if (name == "tanh") return AdapterAct::Tanh;
  throw_error(ErrorKind::Config, context, "unknown non_linearity '", name,
              "' (known: relu, silu (swish), gelu, tanh)");
}

const char* adapter_act_name(AdapterAct a) {
  switch (a) {
    case AdapterAct::Relu:
      return "relu";
    case AdapterAct::Silu:
      return "silu";
    case AdapterAct::Gelu:
      return "gelu";
    case AdapterAct::Tanh:
      return "tanh";
  }
  return "?";
}

void adapter_act_forward(Tensor& a, const Tensor& z, AdapterAct act) {
  const char* op = "adapter_act_forward";
  if (a.numel() != z.numel() || a.dtype() != DType::F32 || z.dtype() != DType::F32)
    throw_error(ErrorKind::Shape, op, ": a ", a.describe(), " and z ", z.describe(),
                " must be F32 of one size");
  check_same_device(a, z, op);
  if (z.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    return adapter_act_forward_cuda(a, z, act);
#endif
  }
  const float* zp = z.data<float>();
  float* ap = a.data<float>();
  for (int64_t i = 0, n = z.numel(); i < n; ++i) {
    const float v = zp[i];
    switch (act) {
      case AdapterAct::Relu:
        ap[i] = v > 0 ? v : 0.0f;
        break;
      case AdapterAct::Silu:
        ap[i] = v / (1.0f + std::exp(-v));
        break;
      case AdapterAct::Gelu:
        ap[i] = 0.5f * v * (1.0f + std::erf(v * kSqrtHalf));
        break;
      case AdapterAct::Tanh:
        ap[i] = std::tanh(v);
        break;
    }
  }
}

void adapter_act_backward(Tensor& dz, const Tensor& da, const Tensor& z, AdapterAct act) {
  const char* op = "adapter_act_backward";
  if (dz.numel() != z.numel() || da.numel() != z.numel() || dz.dtype() != DType::F32 ||
      da.dtype() != DType::F32 || z.dtype() != DType::F32)
    throw_error(ErrorKind::Shape, op, ": dz ", dz.describe(), ", da ", da.describe(), " and z ", z.describe(),
                " must be F32 of one size");
  check_same_device(dz, z, op);
  check_same_device(da, z, op);
  if (z.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    return adapter_act_backward_cuda(dz, da, z, act);
#endif
  }
  const float* zp = z.data<float>();
  const float* g = da.data<float>();
  float* d = dz.data<float>();
  for (int64_t i = 0, n = z.numel(); i < n; ++i) {
    const float v = zp[i];
    float dv = 0;
    switch (act) {
      case AdapterAct::Relu:
        dv = v > 0 ? 1.0f : 0.0f;
        break;
      case AdapterAct::Silu: {
        const float sg = 1.0f / (1.0f + std::exp(-v));
        dv = sg * (1.0f + v * (1.0f - sg));
        break;
      }
      case AdapterAct::Gelu:
        dv = 0.5f * (1.0f + std::erf(v * kSqrtHalf)) + v * kInvSqrt2Pi * std::exp(-0.5f * v * v);
        break;
      case AdapterAct::Tanh: {
        const float t = std::tanh(v);
        dv = 1.0f - t * t;
        break;
      }
    }
    d[i] = g[i] * dv;
  }
}

}  // namespace qtune
