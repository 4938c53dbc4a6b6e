// SwiGLU backward on the GPU, element-wise, f32 math; each of the five tensors BF16 or F32:
//   s = sigmoid(g), silu(g) = g·s, silu'(g) = s·(1 + g·(1 − s)),
//   dgate += dout·up·silu'(g),   dup += dout·silu(g).
// A grid-stride loop; an element's inputs are all read before its outputs are written, so a gradient
// may share storage with the input it belongs to (no __restrict__).
#include <algorithm>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"
#include "ops/cuda/dispatch_train.cuh"

namespace qtune {
namespace cuda {

namespace {

template <class TDG, class TDU, class TD, class TG, class TU>
__global__ void swiglu_backward_kernel(TDG* dgate, TDU* dup, const TD* dout, const TG* gate, const TU* up,
                                       int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    float g = to_f32(gate[i]), u = to_f32(up[i]), d = to_f32(dout[i]);
    float s = 1.0f / (1.0f + expf(-g));
    float dg = to_f32(dgate[i]) + d * u * s * (1.0f + g * (1.0f - s));
    float du = to_f32(dup[i]) + d * g * s;
    dgate[i] = from_f32<TDG>(dg);
    dup[i] = from_f32<TDU>(du);
  }
}

}  // namespace

void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up) {
  const char* op = "swiglu_backward";
  const Tensor* ts[] = {&dgate, &dup, &dout, &gate, &up};
  const char* names[] = {"dgate", "dup", "dout", "gate", "up"};
  for (int j = 0; j < 5; j++) {
    require_cuda(*ts[j], op, names[j]);
    require_dtype(*ts[j], op, names[j], DType::BF16, DType::F32);
    if (ts[j]->numel() != gate.numel())
      throw_error(ErrorKind::Shape, op, ": ", names[j], " ", ts[j]->describe(), " does not match gate ",
                  gate.describe());
  }
  int64_t n = gate.numel();
  if (n == 0) return;
  int threads = 256;
  int blocks = (int)std::min<int64_t>((n + threads - 1) / threads, (int64_t)context().num_sms * 16);
  QT_DISPATCH_TRAIN(dgate.dtype(), op, "dgate", TDG, {
    QT_DISPATCH_TRAIN(dup.dtype(), op, "dup", TDU, {
      QT_DISPATCH_TRAIN(dout.dtype(), op, "dout", TD, {
        QT_DISPATCH_TRAIN(gate.dtype(), op, "gate", TG, {
          QT_DISPATCH_TRAIN(up.dtype(), op, "up", TU, {
            swiglu_backward_kernel<TDG, TDU, TD, TG, TU><<<blocks, threads, 0, stream()>>>(
                dgate.data<TDG>(), dup.data<TDU>(), dout.data<TD>(), gate.data<TG>(), up.data<TU>(), n);
          });
        });
      });
    });
  });
  QT_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

}  // namespace cuda
}  // namespace qtune
