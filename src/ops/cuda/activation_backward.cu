// SwiGLU backward on the GPU, element-wise, f32 math; each of the five tensors BF16 or F32:
//   s = sigmoid(g), silu(g) = g·s, silu'(g) = s·(1 + g·(1 − s)),
//   dgate += dout·up·silu'(g),   dup += dout·silu(g)   (= when not accumulating: dgate/dup not read).
// A grid-stride loop over packs of eight elements (16-byte loads and stores for bf16, two for f32) when
// the count and every pointer allow it, else over single elements. An element's inputs are all read
// before its outputs are written, so a gradient may share storage with its input (no __restrict__).
#include <algorithm>
#include <cstdint>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"
#include "ops/cuda/dispatch_train.cuh"

namespace qtune {
namespace cuda {

namespace {

// dg += d·u·silu'(g), du += d·silu(g), in f32.
__device__ __forceinline__ void swiglu_grad(float& dg, float& du, float d, float g, float u) {
  float s = 1.0f / (1.0f + expf(-g));
  dg += d * u * s * (1.0f + g * (1.0f - s));
  du += d * g * s;
}

template <class TDG, class TDU, class TD, class TG, class TU>
__global__ void swiglu_backward_kernel(TDG* dgate, TDU* dup, const TD* dout, const TG* gate, const TU* up,
                                       int64_t n, bool packed, bool accumulate) {
  int64_t start = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, stride = (int64_t)gridDim.x * blockDim.x;
  if (packed) {
    for (int64_t i = start * 8; i < n; i += stride * 8) {
      float g[8], u[8], d[8], dg[8], du[8];
      load8(gate + i, g);
      load8(up + i, u);
      load8(dout + i, d);
      if (accumulate) {
        load8(dgate + i, dg);
        load8(dup + i, du);
      } else {
#pragma unroll
        for (int j = 0; j < 8; j++) dg[j] = du[j] = 0.0f;
      }
#pragma unroll
      for (int j = 0; j < 8; j++) swiglu_grad(dg[j], du[j], d[j], g[j], u[j]);
      store8(dgate + i, dg);
      store8(dup + i, du);
    }
    return;
  }
  for (int64_t i = start; i < n; i += stride) {
    float dg = accumulate ? to_f32(dgate[i]) : 0.0f, du = accumulate ? to_f32(dup[i]) : 0.0f;
    swiglu_grad(dg, du, to_f32(dout[i]), to_f32(gate[i]), to_f32(up[i]));
    dgate[i] = from_f32<TDG>(dg);
    dup[i] = from_f32<TDU>(du);
  }
}

}  // namespace

void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up,
                     bool accumulate) {
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
  const bool packed = packs_of_8(n, {&dgate, &dup, &dout, &gate, &up});
  int threads = 256;
  int64_t work = packed ? n / 8 : n;
  int blocks = (int)std::min<int64_t>((work + threads - 1) / threads, (int64_t)context().num_sms * 16);
  QT_DISPATCH_TRAIN(dgate.dtype(), op, "dgate", TDG, {
    QT_DISPATCH_TRAIN(dup.dtype(), op, "dup", TDU, {
      QT_DISPATCH_TRAIN(dout.dtype(), op, "dout", TD, {
        QT_DISPATCH_TRAIN(gate.dtype(), op, "gate", TG, {
          QT_DISPATCH_TRAIN(up.dtype(), op, "up", TU, {
            swiglu_backward_kernel<TDG, TDU, TD, TG, TU>
                <<<blocks, threads, 0, stream()>>>(dgate.data<TDG>(), dup.data<TDU>(), dout.data<TD>(),
                                                   gate.data<TG>(), up.data<TU>(), n, packed, accumulate);
          });
        });
      });
    });
  });
  QT_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

}  // namespace cuda
}  // namespace qtune
