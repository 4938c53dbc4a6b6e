// lora_dropout_cuda (see lora_dropout.h).
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/device_util.cuh"
#include "train/cuda/lora_dropout.h"

namespace qtune {
namespace {

template <class TO, class T>
__global__ void lora_dropout_kernel(TO* out, const T* x, int64_t n, LoraMask m) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = cuda::from_f32<TO>(lora_mask_keeps(m, (uint64_t)i) ? cuda::to_f32(x[i]) * m.keep : 0.0f);
}

}  // namespace

void lora_dropout_cuda(Tensor& out, const Tensor& x, const LoraMask& m) {
  const char* op = "lora_dropout";
  cuda::require_cuda(out, op, "out");
  cuda::require_cuda(x, op, "x");
  cuda::require_dtype(out, op, "out", DType::F32, DType::BF16);
  if (out.numel() != x.numel())
    throw_error(ErrorKind::Shape, op, ": out ", out.describe(), " and x ", x.describe(), " differ in size");
  const int64_t n = x.numel();
  if (n == 0) return;
  const int blocks = (int)std::min<int64_t>((n + 255) / 256, 4096);
  QT_DISPATCH_FLOAT(out.dtype(), op, TO, {
    QT_DISPATCH_FLOAT(x.dtype(), op, T, {
      lora_dropout_kernel<TO, T><<<blocks, 256, 0, cuda::stream()>>>(out.data<TO>(), x.data<T>(), n, m);
    });
  });
  QT_CUDA_CHECK_LAUNCH("lora_dropout_kernel");
}

}  // namespace qtune
