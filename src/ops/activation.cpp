// Dispatch for ops/activation.h: checks, then the CPU or CUDA kernel.
#include "ops/activation.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace qtune {
using namespace ops_detail;

void swiglu_forward(Tensor& out, const Tensor& gate, const Tensor& up) {
  const char* op = "swiglu_forward";
  Device dev = check_device(op, {{"out", &out}, {"gate", &gate}, {"up", &up}});
  check_shape(op, {"up", &up}, gate.shape());
  check_shape(op, {"out", &out}, gate.shape());
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::swiglu_forward(out, gate, up);
#else
    no_cuda(op);
#endif
  }
  check_dtype(op, {"gate", &gate}, {DType::F32});
  check_dtype(op, {"up", &up}, {DType::F32});
  check_dtype(op, {"out", &out}, {DType::F32});
  cpu::swiglu_forward(out, gate, up);
}

}  // namespace qtune
