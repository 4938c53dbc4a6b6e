// Linear backward on the GPU through a dense weight, each gradient only when asked for, accumulated (+=):
//   dx[N, I] += dy[N, O]·w[O, I],   dw[O, I] += dy[N, O]ᵀ·x[N, I],   db[O] += Σ_n dy[n, :].
// dy, x, w BF16 (or all F32); dx BF16 or F32 (F32 when the inputs are); dw, db F32.
// The two products are the shared cuBLASLt GEMM (matmul.cu) with beta = 1 (f32 compute, one rounding of
// D = A·B + C).
// db is a column sum of dy: a block of 32 columns × 16 row lanes, reduced in shared memory in a fixed
// order (deterministic).
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"
#include "ops/cuda/dispatch_train.cuh"

namespace qtune {
namespace cuda {

namespace {

constexpr int kBiasRowLanes = 16;

// db[o] += Σ_n dy[n, o]; blockDim (32, kBiasRowLanes), one block per 32 columns.
template <class TG>
__global__ void bias_grad_kernel(float* __restrict__ db, const TG* __restrict__ dy, int N, int O) {
  __shared__ float sums[kBiasRowLanes][33];
  int o = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (o < O)
    for (int n = threadIdx.y; n < N; n += kBiasRowLanes) s += to_f32(dy[(int64_t)n * O + o]);
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || o >= O) return;
  float t = 0.0f;
  for (int j = 0; j < kBiasRowLanes; j++) t += sums[j][threadIdx.x];
  db[o] += t;
}

}  // namespace

void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const char* op = "linear_backward";
  require_cuda(dy, op, "dy");
  require_cuda(x, op, "x");
  require_cuda(w, op, "w");
  if (w.ndim() != 2) throw_error(ErrorKind::Shape, op, ": w must be [O, I], got ", w.describe());
  int64_t O = w.size(0), I = w.size(1);
  if (x.ndim() < 1 || x.size(-1) != I || dy.ndim() < 1 || dy.size(-1) != O)
    throw_error(ErrorKind::Shape, op, ": x ", x.describe(), " and dy ", dy.describe(), " do not match w ",
                w.describe());
  int64_t N = I ? x.numel() / I : (O ? dy.numel() / O : 0);
  if (x.numel() != N * I || dy.numel() != N * O)
    throw_error(ErrorKind::Shape, op, ": x ", x.describe(), " and dy ", dy.describe(),
                " have different row counts");
  bool bf16 = dy.dtype() == DType::BF16 && x.dtype() == DType::BF16 && w.dtype() == DType::BF16;
  bool f32 = dy.dtype() == DType::F32 && x.dtype() == DType::F32 && w.dtype() == DType::F32;
  if (!bf16 && !f32)
    throw_error(ErrorKind::Unsupported, op, ": dy ", dy.describe(), ", x ", x.describe(), " and w ",
                w.describe(), " must all be BF16 or all F32");
  if (dx) {
    require_cuda(*dx, op, "dx");
    require_dtype(*dx, op, "dx", DType::F32, bf16 ? DType::BF16 : DType::F32);
    if (dx->numel() != N * I)
      throw_error(ErrorKind::Shape, op, ": dx ", dx->describe(), " does not match x ", x.describe());
  }
  if (dw) {
    require_cuda(*dw, op, "dw");
    require_dtype(*dw, op, "dw", DType::F32);
    if (dw->numel() != O * I)
      throw_error(ErrorKind::Shape, op, ": dw ", dw->describe(), " does not match w ", w.describe());
  }
  if (db) {
    require_cuda(*db, op, "db");
    require_dtype(*db, op, "db", DType::F32);
    if (db->numel() != O) throw_error(ErrorKind::Shape, op, ": db ", db->describe(), " is not [", O, "]");
  }
  checked_int(N, op);
  checked_int(I, op);
  checked_int(O, op);
  if (N == 0) return;
  const Tensor dy2 = dy.reshape({N, O}), x2 = x.reshape({N, I});
  if (dx) {  // dx[N, I] += dy[N, O]·w[O, I]
    Tensor dx2 = dx->reshape({N, I});
    matmul(dx2, dy2, w, false, false, 1.0f, 1.0f);
  }
  if (dw) {  // dw[O, I] += dy[N, O]ᵀ·x[N, I]
    Tensor dw2 = dw->reshape({O, I});
    matmul(dw2, dy2, x2, true, false, 1.0f, 1.0f);
  }
  if (db && O > 0) {
    QT_DISPATCH_TRAIN(dy.dtype(), op, "dy", TG, {
      bias_grad_kernel<TG><<<ceil_div(O, 32), dim3(32, kBiasRowLanes), 0, stream()>>>(
          db->data<float>(), dy.data<TG>(), (int)N, (int)O);
    });
    QT_CUDA_CHECK_LAUNCH("bias_grad_kernel");
  }
}

}  // namespace cuda
}  // namespace qtune
