// Rotate-half RoPE on the GPU, in place on x[N, H, D] (HF Llama): for i < D/2, with
// a = positions[n] * inv_freq[i] (f32 product, as HF computes it),
//   x[i] ← x[i]·cos a − x[i + D/2]·sin a,   x[i + D/2] ← x[i + D/2]·cos a + x[i]·sin a.
// One block per row n: cos/sin for the row go to shared memory once and serve all H heads; eight rotations
// per step (16-byte accesses) when D/2 % 8 == 0 and x is aligned.
// The backward (rope_backward) is the transpose, the rotation by −a: the same kernel with sin negated,
//   dx[i] ← dx[i]·cos a + dx[i + D/2]·sin a,   dx[i + D/2] ← dx[i + D/2]·cos a − dx[i]·sin a.
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"
#include "ops/cuda/dispatch_train.cuh"

namespace qtune {
namespace cuda {

namespace {

template <class T>
__global__ void rope_kernel(T* __restrict__ x, const int32_t* __restrict__ positions,
                            const float* __restrict__ inv_freq, int H, int D, float sin_sign, bool packed) {
  extern __shared__ float cs[];  // [2, D/2]: cos then sin
  pdl_trigger();                 // a following GEMV may start loading its weights
  int half = D / 2;
  int n = blockIdx.x;
  float pos = (float)positions[n];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);  // full-range sincosf: angles reach thousands of radians
    cs[i] = c;
    cs[half + i] = sin_sign * s;  // −1: the backward, the rotation by −a
  }
  __syncthreads();
  T* row = x + (int64_t)n * H * D;  // [H, D]
  if (packed) {                     // eight rotations per step: 16-byte accesses to both halves of a head
    const int packs = half / 8;
    for (int e = threadIdx.x; e < H * packs; e += blockDim.x) {
      const int h = e / packs, i = (e % packs) * 8;
      T* v = row + (int64_t)h * D;
      float x1[8], x2[8];
      load8(v + i, x1);
      load8(v + i + half, x2);
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const float c = cs[i + j], sn = cs[half + i + j], a = x1[j], b = x2[j];
        x1[j] = a * c - b * sn;
        x2[j] = b * c + a * sn;
      }
      store8(v + i, x1);
      store8(v + i + half, x2);
    }
    return;
  }
  for (int e = threadIdx.x; e < H * half; e += blockDim.x) {
    int h = e / half, i = e % half;
    T* v = row + (int64_t)h * D;
    float x1 = to_f32(v[i]), x2 = to_f32(v[i + half]);
    float c = cs[i], s = cs[half + i];
    v[i] = from_f32<T>(x1 * c - x2 * s);
    v[i + half] = from_f32<T>(x2 * c + x1 * s);
  }
}

}  // namespace

void rope_forward(Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  const char* op = "rope_forward";
  require_cuda(x, op, "x");
  require_cuda(positions, op, "positions");
  require_cuda(inv_freq, op, "inv_freq");
  require_dtype(positions, op, "positions", DType::I32);
  require_dtype(inv_freq, op, "inv_freq", DType::F32);
  if (x.ndim() != 3) throw_error(ErrorKind::Shape, op, ": x must be [N, H, D], got ", x.describe());
  int N = checked_int(x.size(0), op), H = checked_int(x.size(1), op), D = checked_int(x.size(2), op);
  if (D % 2 != 0) throw_error(ErrorKind::Shape, op, ": head dim D must be even, got ", x.describe());
  if (positions.numel() != N)
    throw_error(ErrorKind::Shape, op, ": positions ", positions.describe(), " does not match x ",
                x.describe());
  if (inv_freq.numel() != D / 2)
    throw_error(ErrorKind::Shape, op, ": inv_freq ", inv_freq.describe(), " must have D/2 = ", D / 2,
                " values for x ", x.describe());
  if (N == 0 || H == 0 || D == 0) return;
  int threads = H * D / 2 >= 256 ? 256 : 128;
  size_t smem = (size_t)D * sizeof(float);
  const bool packed = (D / 2) % 8 == 0 && packs_of_8(x.numel(), {&x});
  QT_DISPATCH_FLOAT(x.dtype(), op, T, {
    rope_kernel<T><<<N, threads, smem, stream()>>>(x.data<T>(), positions.data<int32_t>(),
                                                   inv_freq.data<float>(), H, D, 1.0f, packed);
  });
  QT_CUDA_CHECK_LAUNCH("rope_kernel");
}

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
  const bool packed = (D / 2) % 8 == 0 && packs_of_8(dx.numel(), {&dx});
  QT_DISPATCH_TRAIN(dx.dtype(), op, "dx", T, {
    rope_kernel<T><<<N, threads, smem, stream()>>>(dx.data<T>(), positions.data<int32_t>(),
                                                   inv_freq.data<float>(), H, D, -1.0f, packed);
  });
  QT_CUDA_CHECK_LAUNCH("rope_kernel (backward)");
}

}  // namespace cuda
}  // namespace qtune
