// CUDA kernels of peft/dora_ops.h: the row norms of W + s·B·A without forming it, DoRA's output combine and
// the magnitude gradient's finish. Math in f32, one rounding into the stored dtype.
#include <algorithm>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/device_util.cuh"
#include "ops/cuda/dispatch_train.cuh"
#include "peft/cuda/dora_ops_cuda.h"

namespace qtune {
namespace {

constexpr int kNormRows = 16;  // output rows per block: A is read from L2 once per 16 rows
constexpr int kNormThreads = 256;

int grid_for(int64_t n) {
  return (int)std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 8192));
}

// norm[o] = ‖w[o, :] + (s·B)[o, :]·A‖ for kNormRows rows per block: each thread walks columns i, forms the
// r-term dot product of column i of A with each row's scaled B (in shared memory), and sums squares.
template <class TW>
__global__ void dora_norm_kernel(float* __restrict__ norm, const TW* __restrict__ w, const float* __restrict__ a,
                                 const float* __restrict__ b, float scale, int64_t O, int64_t I, int r) {
  extern __shared__ float sb[];  // [kNormRows, r]: scale·B of this block's rows
  __shared__ float red[kNormRows][kNormThreads / 32];
  const int64_t o0 = (int64_t)blockIdx.x * kNormRows;
  const int rows = (int)(O - o0 < kNormRows ? O - o0 : kNormRows);
  for (int k = threadIdx.x; k < kNormRows * r; k += blockDim.x) {
    const int row = k / r;
    sb[k] = row < rows ? scale * b[(o0 + row) * r + k % r] : 0.0f;
  }
  __syncthreads();
  float sq[kNormRows];
#pragma unroll
  for (int row = 0; row < kNormRows; ++row) sq[row] = 0.0f;
  for (int64_t i = threadIdx.x; i < I; i += blockDim.x) {
    float acc[kNormRows];
#pragma unroll
    for (int row = 0; row < kNormRows; ++row) acc[row] = 0.0f;
    for (int k = 0; k < r; ++k) {
      const float av = a[k * I + i];
#pragma unroll
      for (int row = 0; row < kNormRows; ++row) acc[row] += sb[row * r + k] * av;
    }
#pragma unroll
    for (int row = 0; row < kNormRows; ++row)
      if (row < rows) {
        const float v = cuda::to_f32(w[(o0 + row) * I + i]) + acc[row];
        sq[row] += v * v;
      }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int row = 0; row < kNormRows; ++row) {
    const float v = cuda::warp_sum(sq[row]);
    if (lane == 0) red[row][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < rows) {
    float s = 0.0f;
    for (int k = 0; k < kNormThreads / 32; ++k) s += red[threadIdx.x][k];
    norm[o0 + threadIdx.x] = sqrtf(s);
  }
}

__global__ void dora_scale_kernel(float* d, const float* m, const float* norm, float offset, int64_t O) {
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < O; o += (int64_t)gridDim.x * blockDim.x)
    d[o] = m[o] / norm[o] + offset;
}

// out += (d − 1)·(t − bias) + d·u   (t may alias out: each element reads t before writing out)
template <class TO, class TB>
__global__ void dora_combine_kernel(TO* out, const TO* t, const float* __restrict__ u, const float* __restrict__ d,
                                    const TB* __restrict__ bias, int64_t total, int64_t O) {
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total;
       k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = k % O;
    const float bo = bias ? cuda::to_f32(bias[o]) : 0.0f;
    const float tv = cuda::to_f32(t[k]);
    out[k] = cuda::from_f32<TO>(cuda::to_f32(out[k]) + (d[o] - 1.0f) * (tv - bo) + d[o] * u[k]);
  }
}

template <class TB>
__global__ void dora_magnitude_grad_kernel(float* gm, const float* cy, const float* cdy, const TB* bias,
                                           const float* p, const float* b, float scale, const float* norm,
                                           int64_t O, int r) {
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < O; o += (int64_t)gridDim.x * blockDim.x) {
    float acc = cy[o];
    if (bias) acc -= cuda::to_f32(bias[o]) * cdy[o];
    float lora = 0.0f;
    for (int k = 0; k < r; ++k) lora += b[o * r + k] * p[o * r + k];
    gm[o] += (acc + scale * lora) / norm[o];
  }
}

}  // namespace

void dora_weight_norm_cuda(Tensor& norm, const Tensor& w, const Tensor& a, const Tensor& b, float scale) {
  const int64_t O = w.size(0), I = w.size(1);
  const int r = (int)a.size(0);
  const unsigned blocks = (unsigned)((O + kNormRows - 1) / kNormRows);
  const size_t smem = sizeof(float) * kNormRows * r;
  if (smem > 48 * 1024)
    throw_error(ErrorKind::Unsupported, "dora_weight_norm: rank ", r, " is above the 768 the CUDA kernel takes");
  QT_DISPATCH_TRAIN(w.dtype(), "dora_weight_norm", "w", TW, {
    dora_norm_kernel<TW><<<blocks, kNormThreads, smem, cuda::stream()>>>(
        norm.data<float>(), w.data<TW>(), a.data<float>(), b.data<float>(), scale, O, I, r);
  });
  QT_CUDA_CHECK_LAUNCH("dora_norm_kernel");
}

void dora_scale_cuda(Tensor& d, const Tensor& m, const Tensor& norm, float offset) {
  const int64_t O = norm.numel();
  dora_scale_kernel<<<grid_for(O), 256, 0, cuda::stream()>>>(d.data<float>(), m.data<float>(),
                                                             norm.data<float>(), offset, O);
  QT_CUDA_CHECK_LAUNCH("dora_scale_kernel");
}

void dora_combine_cuda(Tensor& out, const Tensor& t, const Tensor& u, const Tensor& d, const Tensor* bias) {
  const int64_t total = out.numel(), O = out.size(-1);
  const char* op = "dora_combine";
  QT_DISPATCH_TRAIN(out.dtype(), op, "out", TO, {
    QT_DISPATCH_TRAIN(bias ? bias->dtype() : DType::F32, op, "bias", TB, {
      dora_combine_kernel<TO, TB><<<grid_for(total), 256, 0, cuda::stream()>>>(
          out.data<TO>(), t.data<TO>(), u.data<float>(), d.data<float>(), bias ? bias->data<TB>() : nullptr,
          total, O);
    });
  });
  QT_CUDA_CHECK_LAUNCH("dora_combine_kernel");
}

void dora_magnitude_grad_cuda(Tensor& gm, const Tensor& cy, const Tensor* cdy, const Tensor* bias,
                              const Tensor& p, const Tensor& b, float scale, const Tensor& norm) {
  const int64_t O = norm.numel();
  const char* op = "dora_magnitude_grad";
  QT_DISPATCH_TRAIN(bias ? bias->dtype() : DType::F32, op, "bias", TB, {
    dora_magnitude_grad_kernel<TB><<<grid_for(O), 256, 0, cuda::stream()>>>(
        gm.data<float>(), cy.data<float>(), cdy ? cdy->data<float>() : nullptr, bias ? bias->data<TB>() : nullptr,
        p.data<float>(), b.data<float>(), scale, norm.data<float>(), O, (int)p.size(1));
  });
  QT_CUDA_CHECK_LAUNCH("dora_magnitude_grad_kernel");
}

}  // namespace qtune
