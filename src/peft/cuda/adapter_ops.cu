// CUDA kernels of peft/adapter_ops.h: column scaling (IA3) forward/backward, column sums, and the bottleneck
// adapters' nonlinearities. Each thread computes in f32 and rounds once to the stored dtype.
#include <algorithm>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/device_util.cuh"
#include "peft/cuda/adapter_ops_cuda.h"

// F32 or BF16 storage for a typed launch.
#define QT_DISPATCH_F32_BF16(dtype, op, TYPE, ...)                                      \
  do {                                                                                  \
    if ((dtype) == ::qtune::DType::F32) {                                               \
      using TYPE = float;                                                               \
      __VA_ARGS__;                                                                      \
    } else if ((dtype) == ::qtune::DType::BF16) {                                       \
      using TYPE = __nv_bfloat16;                                                       \
      __VA_ARGS__;                                                                      \
    } else {                                                                            \
      ::qtune::throw_error(::qtune::ErrorKind::Unsupported, op, ": unsupported dtype ", \
                           ::qtune::dtype_name(dtype), " (F32 or BF16)");               \
    }                                                                                   \
  } while (0)

namespace qtune {
namespace {

int grid_for(int64_t n) {
  return (int)std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 8192));
}

// out[n, j] = x[n, j] · s[j]
template <class TO, class TX>
__global__ void scale_columns_kernel(TO* out, const TX* x, const float* __restrict__ s, int64_t total,
                                     int64_t J) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = cuda::from_f32<TO>(cuda::to_f32(x[i]) * s[i % J]);
}

// dx[n, j] += g[n, j] · s[j]   (s null: += g)
template <class TD, class TG>
__global__ void add_scaled_kernel(TD* dx, const TG* __restrict__ g, const float* __restrict__ s,
                                  int64_t total, int64_t J) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float v = cuda::to_f32(g[i]) * (s ? s[i % J] : 1.0f);
    dx[i] = cuda::from_f32<TD>(cuda::to_f32(dx[i]) + v);
  }
}

// ds[j] += Σ_n g[n, j] · x[n, j]  (x null: Σ_n g): thread = column, blockIdx.y = a chunk of rows, one
// atomicAdd per thread and chunk.
template <class TG, class TX>
__global__ void column_dot_kernel(float* ds, const TG* __restrict__ g, const TX* __restrict__ x, int64_t N,
                                  int64_t J, int64_t rows_per_chunk) {
  const int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (j >= J) return;
  const int64_t r0 = blockIdx.y * rows_per_chunk, r1 = std::min<int64_t>(N, r0 + rows_per_chunk);
  float acc = 0.0f;
  for (int64_t n = r0; n < r1; ++n)
    acc += cuda::to_f32(g[n * J + j]) * (x ? cuda::to_f32(x[n * J + j]) : 1.0f);
  atomicAdd(ds + j, acc);
}

__device__ __forceinline__ float act_f(float v, int act) {
  switch (act) {
    case 0:
      return v > 0.0f ? v : 0.0f;
    case 1:
      return v / (1.0f + expf(-v));
    case 2:
      return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    default:
      return tanhf(v);
  }
}

__device__ __forceinline__ float act_d(float v, int act) {
  switch (act) {
    case 0:
      return v > 0.0f ? 1.0f : 0.0f;
    case 1: {
      const float sg = 1.0f / (1.0f + expf(-v));
      return sg * (1.0f + v * (1.0f - sg));
    }
    case 2:
      return 0.5f * (1.0f + erff(v * 0.70710678118654752f)) + v * 0.39894228040143268f * expf(-0.5f * v * v);
    default: {
      const float t = tanhf(v);
      return 1.0f - t * t;
    }
  }
}

__global__ void act_forward_kernel(float* a, const float* z, int64_t n, int act) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    a[i] = act_f(z[i], act);
}

__global__ void act_backward_kernel(float* dz, const float* da, const float* __restrict__ z, int64_t n,
                                    int act) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    dz[i] = da[i] * act_d(z[i], act);
}

}  // namespace

void scale_columns_cuda(Tensor& out, const Tensor& x, const Tensor& s) {
  const char* op = "scale_columns";
  const int64_t total = x.numel(), J = s.numel();
  QT_DISPATCH_F32_BF16(out.dtype(), op, TO, {
    QT_DISPATCH_F32_BF16(x.dtype(), op, TX, {
      scale_columns_kernel<TO, TX><<<grid_for(total), 256, 0, cuda::stream()>>>(out.data<TO>(), x.data<TX>(),
                                                                                s.data<float>(), total, J);
    });
  });
  QT_CUDA_CHECK_LAUNCH("scale_columns_kernel");
}

void scale_columns_backward_cuda(Tensor* dx, Tensor* ds, const Tensor& g, const Tensor* x, const Tensor* s) {
  const char* op = "scale_columns_backward";
  const int64_t total = g.numel(), J = g.size(-1), N = total / J;
  if (dx) {
    const float* sp = s ? s->data<float>() : nullptr;
    QT_DISPATCH_F32_BF16(dx->dtype(), op, TD, {
      QT_DISPATCH_F32_BF16(g.dtype(), op, TG, {
        add_scaled_kernel<TD, TG>
            <<<grid_for(total), 256, 0, cuda::stream()>>>(dx->data<TD>(), g.data<TG>(), sp, total, J);
      });
    });
    QT_CUDA_CHECK_LAUNCH("add_scaled_kernel");
  }
  if (ds) {
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>((N + 63) / 64, 1024));
    const int64_t rows = (N + chunks - 1) / chunks;
    dim3 grid((unsigned)((J + 255) / 256), (unsigned)chunks);
    const DType xt = x ? x->dtype() : DType::F32;
    QT_DISPATCH_F32_BF16(g.dtype(), op, TG, {
      QT_DISPATCH_F32_BF16(xt, op, TX, {
        column_dot_kernel<TG, TX><<<grid, 256, 0, cuda::stream()>>>(ds->data<float>(), g.data<TG>(),
                                                                    x ? x->data<TX>() : nullptr, N, J, rows);
      });
    });
    QT_CUDA_CHECK_LAUNCH("column_dot_kernel");
  }
}

void adapter_act_forward_cuda(Tensor& a, const Tensor& z, AdapterAct act) {
  const int64_t n = z.numel();
  if (n == 0) return;
  act_forward_kernel<<<grid_for(n), 256, 0, cuda::stream()>>>(a.data<float>(), z.data<float>(), n, (int)act);
  QT_CUDA_CHECK_LAUNCH("act_forward_kernel");
}

void adapter_act_backward_cuda(Tensor& dz, const Tensor& da, const Tensor& z, AdapterAct act) {
  const int64_t n = z.numel();
  if (n == 0) return;
  act_backward_kernel<<<grid_for(n), 256, 0, cuda::stream()>>>(dz.data<float>(), da.data<float>(),
                                                               z.data<float>(), n, (int)act);
  QT_CUDA_CHECK_LAUNCH("act_backward_kernel");
}

}  // namespace qtune
