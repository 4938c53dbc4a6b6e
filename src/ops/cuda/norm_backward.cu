// RMSNorm backward on the GPU (the formula is in ops/norm.h), f32 math, each tensor BF16 or F32:
//   r = 1/sqrt(mean(x²) + eps),  dx[n, c] += r·w[c]·dout[n, c] − x[n, c]·r³/C·Σ_j dout[n, j]·w[j]·x[n, j],
//   dweight[c] += Σ_n dout[n, c]·x[n, c]·r.
// G blocks stride over the rows (packs of eight elements per access when C and the pointers allow). A
// block reduces Σ x² and Σ dout·w·x of its row, updates dx, and adds the row's dweight terms into its own
// f32 scratch row part[b, :] (a thread owns its columns: no atomics).
// A second kernel sums part[:, c] over the blocks in order and adds it to dweight: deterministic.
#include <algorithm>
#include <utility>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"
#include "ops/cuda/dispatch_train.cuh"

namespace qtune {
namespace cuda {

namespace {

// (Σ a, Σ b) over the block, returned to every thread. blockDim.x a multiple of 32, <= 1024.
__device__ __forceinline__ float2 block_sum2(float a, float b) {
  __shared__ float2 partial[32];
  a = warp_sum(a);
  b = warp_sum(b);
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = make_float2(a, b);
  __syncthreads();
  float2 s = make_float2(0.0f, 0.0f);
  for (int i = 0; i < (int)blockDim.x / 32; i++) {
    s.x += partial[i].x;
    s.y += partial[i].y;
  }
  __syncthreads();  // partial is reused for the block's next row
  return s;
}

// part: [gridDim.x, C] f32 scratch, or null when dweight is not wanted.
template <class TDX, class TG, class TX, class TW>
__global__ void rmsnorm_backward_kernel(TDX* __restrict__ dx, float* __restrict__ part,
                                        const TG* __restrict__ dout, const TX* __restrict__ x,
                                        const TW* __restrict__ w, int N, int C, float eps, bool packed) {
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const TX* xr = x + (int64_t)n * C;     // [C]
    const TG* gr = dout + (int64_t)n * C;  // [C]
    TDX* dr = dx + (int64_t)n * C;         // [C]
    float ss = 0.0f, dot = 0.0f;
    if (packed) {  // the same sums over packs of eight (16-byte accesses)
      float xv[8], gv[8], wv[8], dv[8];
      for (int c = threadIdx.x * 8; c < C; c += blockDim.x * 8) {
        load8(xr + c, xv);
        load8(gr + c, gv);
        load8(w + c, wv);
#pragma unroll
        for (int j = 0; j < 8; j++) {
          ss += xv[j] * xv[j];
          dot += gv[j] * wv[j] * xv[j];
        }
      }
      float2 s = block_sum2(ss, dot);
      float r = 1.0f / sqrtf(s.x / (float)C + eps);
      float k = r * r * r * s.y / (float)C;
      bool first = n == (int)blockIdx.x;
      float* pr = part ? part + (int64_t)blockIdx.x * C : nullptr;  // [C]
      for (int c = threadIdx.x * 8; c < C; c += blockDim.x * 8) {
        load8(xr + c, xv);
        load8(gr + c, gv);
        load8(w + c, wv);
        load8(dr + c, dv);
#pragma unroll
        for (int j = 0; j < 8; j++) dv[j] = dv[j] + r * wv[j] * gv[j] - k * xv[j];
        store8(dr + c, dv);
        if (pr) {
          float pv[8];
          if (first)
#pragma unroll
            for (int j = 0; j < 8; j++) pv[j] = 0.0f;
          else
            load8(pr + c, pv);
#pragma unroll
          for (int j = 0; j < 8; j++) pv[j] += gv[j] * xv[j] * r;
          store8(pr + c, pv);
        }
      }
      continue;
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      float xv = to_f32(xr[c]);
      ss += xv * xv;
      dot += to_f32(gr[c]) * to_f32(w[c]) * xv;
    }
    float2 s = block_sum2(ss, dot);
    float r = 1.0f / sqrtf(s.x / (float)C + eps);
    float k = r * r * r * s.y / (float)C;
    bool first = n == (int)blockIdx.x;
    float* pr = part ? part + (int64_t)blockIdx.x * C : nullptr;  // [C]
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      float xv = to_f32(xr[c]), gv = to_f32(gr[c]);
      dr[c] = from_f32<TDX>(to_f32(dr[c]) + r * to_f32(w[c]) * gv - k * xv);
      if (pr) pr[c] = (first ? 0.0f : pr[c]) + gv * xv * r;
    }
  }
}

// dw[c] += Σ_b part[b, c], b ascending.
template <class TDW>
__global__ void sum_parts_kernel(TDW* __restrict__ dw, const float* __restrict__ part, int G, int C) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0.0f;
  for (int b = 0; b < G; b++) s += part[(int64_t)b * C + c];
  dw[c] = from_f32<TDW>(to_f32(dw[c]) + s);
}

}  // namespace

void rmsnorm_backward(Tensor& dx, Tensor* dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      float eps) {
  const char* op = "rmsnorm_backward";
  require_cuda(dx, op, "dx");
  require_cuda(dout, op, "dout");
  require_cuda(x, op, "x");
  require_cuda(weight, op, "weight");
  if (dweight) require_cuda(*dweight, op, "dweight");
  for (auto [t, name] : {std::pair<const Tensor*, const char*>{&dx, "dx"},
                         {&dout, "dout"},
                         {&x, "x"},
                         {&weight, "weight"},
                         {dweight, "dweight"}})
    if (t) require_dtype(*t, op, name, DType::BF16, DType::F32);
  int64_t C = weight.numel();
  if (x.ndim() < 1 || x.size(-1) != C || dx.numel() != x.numel() || dout.numel() != x.numel() ||
      (dweight && dweight->numel() != C))
    throw_error(ErrorKind::Shape, op, ": x ", x.describe(), ", dx ", dx.describe(), ", dout ",
                dout.describe(), " and weight ", weight.describe(), " do not match");
  if (C == 0) return;
  int N = checked_int(x.numel() / C, op);
  checked_int(C, op);
  if (N == 0) return;
  int threads = rmsnorm_threads(C);
  int G = (int)std::min<int64_t>(N, (int64_t)context().num_sms * (2048 / threads));
  Tensor part;  // [G, C]
  if (dweight) part = Tensor::empty({G, C}, DType::F32, Device::CUDA);
  float* pp = dweight ? part.data<float>() : nullptr;
  const bool packed = packs_of_8(C, {&weight}) && packs_of_8(x.numel(), {&dx, &dout, &x});
  QT_DISPATCH_TRAIN(dx.dtype(), op, "dx", TDX, {
    QT_DISPATCH_TRAIN(dout.dtype(), op, "dout", TG, {
      QT_DISPATCH_TRAIN(x.dtype(), op, "x", TX, {
        QT_DISPATCH_TRAIN(weight.dtype(), op, "weight", TW, {
          rmsnorm_backward_kernel<TDX, TG, TX, TW><<<G, threads, 0, stream()>>>(
              dx.data<TDX>(), pp, dout.data<TG>(), x.data<TX>(), weight.data<TW>(), N, (int)C, eps, packed);
        });
      });
    });
  });
  QT_CUDA_CHECK_LAUNCH("rmsnorm_backward_kernel");
  if (!dweight) return;
  QT_DISPATCH_TRAIN(dweight->dtype(), op, "dweight", TDW, {
    sum_parts_kernel<TDW><<<ceil_div(C, 256), 256, 0, stream()>>>(dweight->data<TDW>(), pp, G, (int)C);
  });
  QT_CUDA_CHECK_LAUNCH("sum_parts_kernel");
}

}  // namespace cuda
}  // namespace qtune
