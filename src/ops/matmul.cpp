// Dispatch for ops/matmul.h: checks, then the CPU or CUDA kernel.
#include "ops/matmul.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace qtune {
using namespace ops_detail;

void linear_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias) {
  const char* op = "linear_forward";
  Device dev = bias ? check_device(op, {{"out", &out}, {"x", &x}, {"w", &w}, {"bias", bias}})
                    : check_device(op, {{"out", &out}, {"x", &x}, {"w", &w}});
  check_ndim(op, {"w", &w}, 2);
  int64_t O = w.size(0), I = w.size(1);
  int64_t N = check_rows(op, {"x", &x}, I);
  int64_t rows = check_rows(op, {"out", &out}, O);
  if (rows != N)
    throw_error(ErrorKind::Shape, op, ": 'out' ", out.describe(), " has ", rows, " rows, x ", x.describe(),
                " has ", N);
  if (bias) check_shape(op, {"bias", bias}, {O});
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::linear_forward(out, x, w, bias);
#else
    no_cuda(op);
#endif
  }
  check_dtype(op, {"x", &x}, {DType::F32});
  check_dtype(op, {"w", &w}, {DType::F32});
  check_dtype(op, {"out", &out}, {DType::F32});
  if (bias) check_dtype(op, {"bias", bias}, {DType::F32});
  cpu::linear_forward(out, x, w, bias);
}

void linear_forward_multi(const std::vector<Tensor*>& outs, const Tensor& x,
                          const std::vector<const Tensor*>& ws) {
  const char* op = "linear_forward_multi";
  if (outs.size() != ws.size() || ws.empty())
    throw_error(ErrorKind::Shape, op, ": ", outs.size(), " outputs and ", ws.size(),
                " weights (need one output per weight, at least one)");
  for (size_t j = 0; j < ws.size(); j++)
    if (!outs[j] || !ws[j]) throw_error(ErrorKind::Shape, op, ": output or weight ", j, " is null");
  if (x.device() == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    for (size_t j = 0; j < ws.size(); j++)  // the dispatch's device and shape checks, per pair
      check_device(op, {{"out", outs[j]}, {"x", &x}, {"w", ws[j]}});
    return cuda::linear_forward_multi(outs, x, ws);
#else
    no_cuda(op);
#endif
  }
  for (size_t j = 0; j < ws.size(); j++) linear_forward(*outs[j], x, *ws[j]);
}

void matmul(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, float alpha,
            float beta) {
  const char* op = "matmul";
  Device dev = check_device(op, {{"out", &out}, {"a", &a}, {"b", &b}});
  check_ndim(op, {"a", &a}, 2);
  check_ndim(op, {"b", &b}, 2);
  check_ndim(op, {"out", &out}, 2);
  int64_t M = trans_a ? a.size(1) : a.size(0), K = trans_a ? a.size(0) : a.size(1);
  int64_t Kb = trans_b ? b.size(1) : b.size(0), N = trans_b ? b.size(0) : b.size(1);
  if (K != Kb)
    throw_error(ErrorKind::Shape, op, ": inner dims differ: op(a) is [", M, ", ", K, "], op(b) is [", Kb,
                ", ", N, "] (a ", a.describe(), trans_a ? " transposed" : "", ", b ", b.describe(),
                trans_b ? " transposed" : "", ")");
  check_shape(op, {"out", &out}, {M, N});
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::matmul(out, a, b, trans_a, trans_b, alpha, beta);
#else
    no_cuda(op);
#endif
  }
  check_dtype(op, {"a", &a}, {DType::F32});
  check_dtype(op, {"b", &b}, {DType::F32});
  check_dtype(op, {"out", &out}, {DType::F32});
  cpu::matmul(out, a, b, trans_a, trans_b, alpha, beta);
}

}  // namespace qtune
