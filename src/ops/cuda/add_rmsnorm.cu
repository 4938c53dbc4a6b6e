// add_rmsnorm: the residual add and the next RMSNorm of a decoder block in one launch,
//   x[n, :] += y[n, :] (rounded to x's dtype, as add_inplace),  out[n, :] = rmsnorm(x[n, :]) * weight,
// with rmsnorm_kernel's arithmetic (same thread count, same f32 sum order over the rounded x), so the
// result equals add_inplace followed by rmsnorm_forward bit for bit. At batch 1 each launch costs more
// than its few kilobytes of traffic, and a decode step has two of these per layer.
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"

namespace qtune {
namespace cuda {

namespace {

template <class T, class TW>
__global__ void add_rmsnorm_kernel(T* __restrict__ x, const T* __restrict__ y, T* __restrict__ out,
                                   const TW* __restrict__ w, int C, float eps, bool packed) {
  pdl_trigger();  // a following GEMV may start launching (it waits before loads)
  pdl_wait();
  T* row = x + (int64_t)blockIdx.x * C;  // [C]
  const T* yrow = y + (int64_t)blockIdx.x * C;
  T* orow = out + (int64_t)blockIdx.x * C;
  float ss = 0.0f;
  if (packed) {  // rmsnorm_kernel's packed order
    float v[8], b[8];
    for (int c = threadIdx.x * 8; c < C; c += blockDim.x * 8) {
      load8(row + c, v);
      load8(yrow + c, b);
#pragma unroll
      for (int j = 0; j < 8; j++) v[j] = to_f32(from_f32<T>(v[j] + b[j]));  // x rounded as stored
      store8(row + c, v);
#pragma unroll
      for (int j = 0; j < 8; j++) ss += v[j] * v[j];
    }
    const float rstd = block_rstd(ss, C, eps);
    for (int c = threadIdx.x * 8; c < C; c += blockDim.x * 8) {  // the packs this thread wrote above
      load8(row + c, v);
      load8(w + c, b);
#pragma unroll
      for (int j = 0; j < 8; j++) v[j] = v[j] * rstd * b[j];
      store8(orow + c, v);
    }
    return;
  }
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    T s = from_f32<T>(to_f32(row[c]) + to_f32(yrow[c]));
    row[c] = s;
    float v = to_f32(s);
    ss += v * v;
  }
  float rstd = block_rstd(ss, C, eps);
  for (int c = threadIdx.x; c < C; c += blockDim.x)  // the elements this thread wrote above
    orow[c] = from_f32<T>(to_f32(row[c]) * rstd * to_f32(w[c]));
}

}  // namespace

void add_rmsnorm(Tensor& x, const Tensor& y, Tensor& out, const Tensor& weight, float eps) {
  const char* op = "add_rmsnorm";
  require_cuda(x, op, "x");
  require_cuda(y, op, "y");
  require_cuda(out, op, "out");
  require_cuda(weight, op, "weight");
  if (x.ndim() < 1) throw_error(ErrorKind::Shape, op, ": x must be [N, C], got ", x.describe());
  const int64_t C = x.size(-1);
  if (y.numel() != x.numel() || out.numel() != x.numel() || weight.numel() != C || y.dtype() != x.dtype() ||
      out.dtype() != x.dtype())
    throw_error(ErrorKind::Shape, op, ": x ", x.describe(), ", y ", y.describe(), ", out ", out.describe(),
                " and weight ", weight.describe(), " must agree (x, y, out alike; weight [C])");
  if (C == 0) return;
  const int N = checked_int(x.numel() / C, op);
  if (N == 0) return;
  const int threads = rmsnorm_threads(C);  // as rmsnorm_forward
  const bool packed = packs_of_8(C, {&weight}) && packs_of_8(x.numel(), {&x, &y, &out});
  QT_DISPATCH_FLOAT(x.dtype(), op, T, {
    QT_DISPATCH_FLOAT(weight.dtype(), op, TW, {
      QT_CUDA_CHECK(launch_pdl(add_rmsnorm_kernel<T, TW>, dim3(N), dim3(threads), 0, stream(), x.data<T>(),
                               y.data<T>(), out.data<T>(), weight.data<TW>(), (int)C, eps, packed));
    });
  });
  QT_CUDA_CHECK_LAUNCH("add_rmsnorm_kernel");
}

}  // namespace cuda
}  // namespace qtune
