// RoPE backward on the GPU, in place on dx[N, H, D] (BF16 or F32), f32 math. The forward rotation is
// orthogonal, so its transpose is the rotation by −a, a = positions[n]·inv_freq[i] (f32 product):
//   dx[i] ← dx[i]·cos a + dx[i + D/2]·sin a,   dx[i + D/2] ← dx[i + D/2]·cos a − dx[i]·sin a.
// One block per row n: the row's cos/sin go to shared memory once and serve all H heads.
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"
#include "ops/cuda/dispatch_train.cuh"

namespace qtune {
namespace cuda {

namespace {

template <class T>
__global__ void rope_backward_kernel(T* __restrict__ dx, const int32_t* __restrict__ positions,
                                     const float* __restrict__ inv_freq, int H, int D) {
  extern __shared__ float cs[];  // [2, D/2]: cos then sin
  int half = D / 2;
  int n = blockIdx.x;
  float pos = (float)positions[n];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);  // full-range: angles reach thousands of radians
    cs[i] = c;
    cs[half + i] = s;
  }
  __syncthreads();
  T* row = dx + (int64_t)n * H * D;  // [H, D]
  for (int e = threadIdx.x; e < H * half; e += blockDim.x) {
    int h = e / half, i = e % half;
    T* v = row + (int64_t)h * D;  // [D]
    float g1 = to_f32(v[i]), g2 = to_f32(v[i + half]);
    float c = cs[i], s = cs[half + i];
    v[i] = from_f32<T>(g1 * c + g2 * s);
    v[i + half] = from_f32<T>(g2 * c - g1 * s);
  }
}

}  // namespace

void rope_backward(Tensor& dx, const Tensor& positions, const Tensor& inv_freq) {
  const char* op = "rope_backward";
  require_cuda(dx, op, "dx");
  require_cuda(positions, op, "positions");
  require_cuda(inv_freq, op, "inv_freq");
  require_dtype(dx, op, "dx", DType::BF16, DType::F32);
  require_dtype(positions, op, "positions", DType::I32);
  require_dtype(inv_freq, op, "inv_freq", DType::F32);
  if (dx.ndim() != 3) throw_error(ErrorKind::Shape, op, ": dx must be [N, H, D], got ", dx.describe());
  int N = checked_int(dx.size(0), op), H = checked_int(dx.size(1), op), D = checked_int(dx.size(2), op);
  if (D % 2 != 0) throw_error(ErrorKind::Shape, op, ": head dim D must be even, got ", dx.describe());
  if (positions.numel() != N || inv_freq.numel() != D / 2)
    throw_error(ErrorKind::Shape, op, ": positions ", positions.describe(), " and inv_freq ",
                inv_freq.describe(), " must be [N] and [D/2] for dx ", dx.describe());
  if (N == 0 || H == 0 || D == 0) return;
  int threads = H * D / 2 >= 256 ? 256 : 128;
  size_t smem = (size_t)D * sizeof(float);
  QT_DISPATCH_TRAIN(dx.dtype(), op, "dx", T, {
    rope_backward_kernel<T><<<N, threads, smem, stream()>>>(dx.data<T>(), positions.data<int32_t>(),
                                                            inv_freq.data<float>(), H, D);
  });
  QT_CUDA_CHECK_LAUNCH("rope_backward_kernel");
}

}  // namespace cuda
}  // namespace qtune
