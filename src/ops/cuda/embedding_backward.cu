// Embedding backward on the GPU: dtable[ids[n], :] += dout[n, :] (a scatter-add; repeated ids sum).
// dtable F32 [V, C], dout BF16/F32 [N, C], ids I32 [N]. One block per row n, atomicAdd per element: the
// sum over repeated ids is in no fixed order (differences at f32 rounding level between runs).
// The ids are range-checked on the host first (one small copy), so a bad id leaves dtable untouched.
#include <vector>

#include "core/allocator.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"
#include "ops/cuda/dispatch_train.cuh"

namespace qtune {
namespace cuda {

namespace {

template <class TG>
__global__ void embedding_backward_kernel(float* __restrict__ dtable, const int32_t* __restrict__ ids,
                                          const TG* __restrict__ dout, int C) {
  int n = blockIdx.x;
  float* row = dtable + (int64_t)ids[n] * C;  // [C]
  const TG* g = dout + (int64_t)n * C;        // [C]
  for (int c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(row + c, to_f32(g[c]));
}

}  // namespace

void embedding_backward(Tensor& dtable, const Tensor& ids, const Tensor& dout) {
  const char* op = "embedding_backward";
  require_cuda(dtable, op, "dtable");
  require_cuda(ids, op, "ids");
  require_cuda(dout, op, "dout");
  require_dtype(dtable, op, "dtable", DType::F32);
  require_dtype(ids, op, "ids", DType::I32);
  require_dtype(dout, op, "dout", DType::BF16, DType::F32);
  if (dtable.ndim() != 2)
    throw_error(ErrorKind::Shape, op, ": dtable must be [V, C], got ", dtable.describe());
  int64_t V = dtable.size(0);
  int C = checked_int(dtable.size(1), op);
  int N = checked_int(ids.numel(), op);
  if (dout.numel() != (int64_t)N * C)
    throw_error(ErrorKind::Shape, op, ": dout ", dout.describe(), " is not [", N, ", ", C, "]");
  if (N == 0 || C == 0) return;
  std::vector<int32_t> host(N);
  copy_bytes(host.data(), Device::CPU, ids.raw(), Device::CUDA, (size_t)N * sizeof(int32_t));
  for (int n = 0; n < N; n++)
    if (host[n] < 0 || host[n] >= V)
      throw_error(ErrorKind::Shape, op, ": token id ", host[n], " at position ", n,
                  " is outside the vocabulary [0, ", V, ")");
  int threads = C >= 1024 ? 256 : 128;
  QT_DISPATCH_TRAIN(dout.dtype(), op, "dout", TG, {
    embedding_backward_kernel<TG>
        <<<N, threads, 0, stream()>>>(dtable.data<float>(), ids.data<int32_t>(), dout.data<TG>(), C);
  });
  QT_CUDA_CHECK_LAUNCH("embedding_backward_kernel");
}

}  // namespace cuda
}  // namespace qtune
