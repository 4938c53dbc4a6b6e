// Dispatch for ops/norm.h: checks, then the CPU or CUDA kernel.
#include "ops/norm.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace qtune {
using namespace ops_detail;

void rmsnorm_forward(Tensor& out, const Tensor& x, const Tensor& weight, float eps) {
  const char* op = "rmsnorm_forward";
  Device dev = check_device(op, {{"out", &out}, {"x", &x}, {"weight", &weight}});
  check_ndim(op, {"weight", &weight}, 1);
  int64_t C = weight.size(0);
  check_rows(op, {"x", &x}, C);
  check_shape(op, {"out", &out}, x.shape());
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::rmsnorm_forward(out, x, weight, eps);
#else
    no_cuda(op);
#endif
  }
  check_dtype(op, {"x", &x}, {DType::F32});
  check_dtype(op, {"weight", &weight}, {DType::F32});
  check_dtype(op, {"out", &out}, {DType::F32});
  cpu::rmsnorm_forward(out, x, weight, eps);
}

}  // namespace qtune
