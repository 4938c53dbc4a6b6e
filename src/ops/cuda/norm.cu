// RMSNorm on the GPU: out[n, :] = x[n, :] / sqrt(mean(x[n, :]²) + eps) * weight, in f32 math.
// One block per row: a block-wide sum of squares (warp shuffles, then shared memory), then a second
// pass that scales (that re-read of the row hits L1/L2); packs of eight elements per access when C and
// the pointers allow it.
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"

namespace qtune {
namespace cuda {

namespace {

// packed: C % 8 == 0 and aligned rows: each thread takes packs of eight (16-byte accesses) instead of
// single elements (add_rmsnorm follows the same order, so the two stay bit-identical).
template <class TX, class TW, class TO>
__global__ void rmsnorm_kernel(TO* __restrict__ out, const TX* __restrict__ x, const TW* __restrict__ w,
                               int C, float eps, bool packed) {
  pdl_trigger();  // a following GEMV may start loading its weights
  pdl_wait();
  const TX* row = x + (int64_t)blockIdx.x * C;  // [C]
  TO* orow = out + (int64_t)blockIdx.x * C;     // [C]
  float ss = 0.0f;
  if (packed) {
    float v[8], wv[8];
    for (int c = threadIdx.x * 8; c < C; c += blockDim.x * 8) {
      load8(row + c, v);
#pragma unroll
      for (int j = 0; j < 8; j++) ss += v[j] * v[j];
    }
    const float rstd = block_rstd(ss, C, eps);
    for (int c = threadIdx.x * 8; c < C; c += blockDim.x * 8) {
      load8(row + c, v);
      load8(w + c, wv);
#pragma unroll
      for (int j = 0; j < 8; j++) v[j] = v[j] * rstd * wv[j];
      store8(orow + c, v);
    }
    return;
  }
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float v = to_f32(row[c]);
    ss += v * v;
  }
  float rstd = block_rstd(ss, C, eps);
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    orow[c] = from_f32<TO>(to_f32(row[c]) * rstd * to_f32(w[c]));
}

}  // namespace

void rmsnorm_forward(Tensor& out, const Tensor& x, const Tensor& weight, float eps) {
  const char* op = "rmsnorm_forward";
  require_cuda(out, op, "out");
  require_cuda(x, op, "x");
  require_cuda(weight, op, "weight");
  if (x.ndim() < 1) throw_error(ErrorKind::Shape, op, ": x must be [N, C], got ", x.describe());
  int64_t C = x.size(-1);
  if (weight.numel() != C)
    throw_error(ErrorKind::Shape, op, ": weight ", weight.describe(), " does not match x ", x.describe());
  if (out.numel() != x.numel())
    throw_error(ErrorKind::Shape, op, ": out ", out.describe(), " does not match x ", x.describe());
  if (C == 0) return;
  int N = checked_int(x.numel() / C, op);
  if (N == 0) return;
  int threads = rmsnorm_threads(C);
  const bool packed = packs_of_8(C, {&weight}) && packs_of_8(x.numel(), {&x, &out});
  QT_DISPATCH_FLOAT(x.dtype(), op, TX, {
    QT_DISPATCH_FLOAT(weight.dtype(), op, TW, {
      QT_DISPATCH_FLOAT(out.dtype(), op, TO, {
        QT_CUDA_CHECK(launch_pdl(rmsnorm_kernel<TX, TW, TO>, dim3(N), dim3(threads), 0, stream(),
                                 out.data<TO>(), x.data<TX>(), weight.data<TW>(), (int)C, eps, packed));
      });
    });
  });
  QT_CUDA_CHECK_LAUNCH("rmsnorm_kernel");
}

}  // namespace cuda
}  // namespace qtune
