// Dispatch for ops/elementwise.h: checks, then the CPU or CUDA kernel.
#include "ops/elementwise.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace qtune {
using namespace ops_detail;

void add_inplace(Tensor& x, const Tensor& y) {
  const char* op = "add_inplace";
  Device dev = check_device(op, {{"x", &x}, {"y", &y}});
  if (x.numel() != y.numel() || (dev == Device::CPU && x.dtype() != y.dtype()))
    throw_error(ErrorKind::Shape, op, ": 'y' ", y.describe(), " does not match 'x' ", x.describe());
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::add_inplace(x, y);
#else
    no_cuda(op);
#endif
  }
  check_dtype(op, {"x", &x}, {DType::F32});
  cpu::add_inplace(x, y);
}

void convert(Tensor& out, const Tensor& in) {
  const char* op = "convert";
  Device dev = check_device(op, {{"out", &out}, {"in", &in}});
  check_dtype(op, {"in", &in}, {DType::F32, DType::BF16, DType::F16});
  check_dtype(op, {"out", &out}, {DType::F32, DType::BF16, DType::F16});
  if (out.numel() != in.numel())
    throw_error(ErrorKind::Shape, op, ": 'out' ", out.describe(), " and 'in' ", in.describe(),
                " differ in element count");
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::convert(out, in);
#else
    no_cuda(op);
#endif
  }
  cpu::convert(out, in);
}

}  // namespace qtune
