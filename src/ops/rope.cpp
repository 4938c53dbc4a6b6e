// Dispatch for ops/rope.h: checks, then the CPU or CUDA kernel.
#include "ops/rope.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace qtune {
using namespace ops_detail;

void rope_forward(Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  const char* op = "rope_forward";
  Device dev = check_device(op, {{"x", &x}, {"positions", &positions}, {"inv_freq", &inv_freq}});
  check_ndim(op, {"x", &x}, 3);
  int64_t N = x.size(0), D = x.size(2);
  if (D % 2 != 0) throw_error(ErrorKind::Shape, op, ": head dim must be even, got ", x.describe());
  check_dtype(op, {"positions", &positions}, {DType::I32});
  check_shape(op, {"positions", &positions}, {N});
  check_dtype(op, {"inv_freq", &inv_freq}, {DType::F32});
  check_shape(op, {"inv_freq", &inv_freq}, {D / 2});
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::rope_forward(x, positions, inv_freq);
#else
    no_cuda(op);
#endif
  }
  check_dtype(op, {"x", &x}, {DType::F32});
  cpu::rope_forward(x, positions, inv_freq);
}

}  // namespace qtune
