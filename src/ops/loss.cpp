// Dispatch for ops/loss.h: checks (shapes, label range), then the CPU or CUDA kernel.
#include "ops/loss.h"

#include "ops/check.h"
#include "ops/cpu/backward_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace qtune {
using namespace ops_detail;

LossSum cross_entropy_forward_backward(const Tensor& hidden, const Tensor& lm_head, const Tensor& labels,
                                       Tensor* dhidden, Tensor* dlm_head, float grad_scale,
                                       int64_t chunk_rows) {
  const char* op = "cross_entropy";
  Device dev = check_device(op, {{"hidden", &hidden}, {"lm_head", &lm_head}});
  if (dev == Device::CPU) check_device(op, {{"hidden", &hidden}, {"labels", &labels}});
  check_ndim(op, {"lm_head", &lm_head}, 2);
  int64_t V = lm_head.size(0), C = lm_head.size(1);
  int64_t N = check_rows(op, {"hidden", &hidden}, C);
  check_dtype(op, {"labels", &labels}, {DType::I32});
  if (labels.numel() != N)
    throw_error(ErrorKind::Shape, op, ": 'labels' ", labels.describe(), " has ", labels.numel(),
                " entries for ", N, " rows of hidden ", hidden.describe());
  if (chunk_rows < 1) throw_error(ErrorKind::Usage, op, ": chunk_rows must be >= 1, got ", chunk_rows);
  Tensor host_labels = labels.to(Device::CPU);
  const int32_t* y = host_labels.data<int32_t>();
  for (int64_t n = 0; n < N; n++)
    if (y[n] != kIgnoreIndex && (y[n] < 0 || y[n] >= V))
      throw_error(ErrorKind::Shape, op, ": label ", y[n], " at row ", n, " is outside the vocabulary [0, ", V,
                  ") and is not the ignore index -100");
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    for (const Tensor* t : {dhidden, dlm_head})
      if (t) check_device(op, {{"hidden", &hidden}, {t == dhidden ? "dhidden" : "dlm_head", t}});
    if (dhidden) check_shape(op, {"dhidden", dhidden}, hidden.shape());
    if (dlm_head) {
      check_shape(op, {"dlm_head", dlm_head}, lm_head.shape());
      check_dtype(op, {"dlm_head", dlm_head}, {DType::F32});
    }
    return cuda::cross_entropy_forward_backward(hidden, lm_head, labels.to(Device::CUDA), dhidden, dlm_head,
                                                grad_scale, chunk_rows);
#else
    no_cuda(op);
#endif
  }
  check_dtype(op, {"hidden", &hidden}, {DType::F32});
  check_dtype(op, {"lm_head", &lm_head}, {DType::F32});
  if (dhidden) {
    check_device(op, {{"hidden", &hidden}, {"dhidden", dhidden}});
    check_shape(op, {"dhidden", dhidden}, hidden.shape());
    check_dtype(op, {"dhidden", dhidden}, {DType::F32});
  }
  if (dlm_head) {
    check_device(op, {{"hidden", &hidden}, {"dlm_head", dlm_head}});
    check_shape(op, {"dlm_head", dlm_head}, lm_head.shape());
    check_dtype(op, {"dlm_head", dlm_head}, {DType::F32});
  }
  return cpu::cross_entropy_forward_backward(hidden, lm_head, labels, dhidden, dlm_head, grad_scale,
                                             chunk_rows);
}

}  // namespace qtune
