// CUDA row kernels of the LLaMA-Adapter prompt attention (peft/adaption_attention.h): one warp per score
// row (a query head), lanes striding over its Lp own columns for the softmax (or its backward) and over all
// W = Lp·Hkv columns for the coalesced writes of W / Z. The gate gradient is summed per row, then by one
// block in a fixed order (deterministic).
#include <cmath>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/device_util.cuh"
#include "peft/cuda/adaption_attention_cuda.h"

namespace qtune {
namespace {

constexpr int kRowsPerBlock = 8;  // warps of a 256-thread block

// probs[r, p] = softmax_p(s[r, p·Hkv + j]·scale); w[r, c] = gate·probs on the row's columns, else 0.
template <class TW>
__global__ void rows_forward_kernel(float* __restrict__ probs, TW* __restrict__ w,
                                    const float* __restrict__ s, int64_t R, int Hq, int Hkv, int Lp,
                                    float scale, float gate) {
  const int64_t r = blockIdx.x * (int64_t)kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= R) return;  // whole warps leave together
  const int j = (int)(r % Hq) / (Hq / Hkv);
  const int64_t W = (int64_t)Lp * Hkv;
  const float* sr = s + r * W;
  float m = -INFINITY;
  for (int p = lane; p < Lp; p += 32) m = fmaxf(m, sr[(int64_t)p * Hkv + j] * scale);
  m = cuda::warp_max(m);
  float sum = 0.0f;
  for (int p = lane; p < Lp; p += 32) sum += expf(sr[(int64_t)p * Hkv + j] * scale - m);
  const float inv = 1.0f / cuda::warp_sum(sum);
  for (int p = lane; p < Lp; p += 32) probs[r * Lp + p] = expf(sr[(int64_t)p * Hkv + j] * scale - m) * inv;
  for (int64_t c = lane; c < W; c += 32)
    w[r * W + c] = cuda::from_f32<TW>(c % Hkv == j ? gate * (expf(sr[c] * scale - m) * inv) : 0.0f);
}

// dot = Σ_p P·dŝ (dŝ[p] = ds[r, p·Hkv + j]); z = gate·P·(dŝ − dot)·scale, w = gate·P on the row's columns.
template <class TZ, class TW>
__global__ void rows_backward_kernel(TZ* __restrict__ z, TW* __restrict__ w, float* __restrict__ rowg,
                                     const float* __restrict__ ds, const float* __restrict__ probs, int64_t R,
                                     int Hq, int Hkv, int Lp, float scale, float gate) {
  const int64_t r = blockIdx.x * (int64_t)kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= R) return;
  const int j = (int)(r % Hq) / (Hq / Hkv);
  const int64_t W = (int64_t)Lp * Hkv;
  const float* dr = ds + r * W;
  const float* pr = probs + r * Lp;
  float dot = 0.0f;
  for (int p = lane; p < Lp; p += 32) dot += pr[p] * dr[(int64_t)p * Hkv + j];
  dot = cuda::warp_sum(dot);
  if (lane == 0 && rowg) rowg[r] = dot;
  for (int64_t c = lane; c < W; c += 32) {
    float zv = 0.0f, wv = 0.0f;
    if (c % Hkv == j) {
      const float P = pr[c / Hkv];
      zv = gate * P * (dr[c] - dot) * scale;
      wv = gate * P;
    }
    z[r * W + c] = cuda::from_f32<TZ>(zv);
    w[r * W + c] = cuda::from_f32<TW>(wv);
  }
}

// out[0] += Σ x[0..n) by one block, in a fixed order.
__global__ void sum_into_kernel(float* out, const float* __restrict__ x, int64_t n) {
  __shared__ float part[32];
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
  acc = cuda::warp_sum(acc);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) part[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    float v = lane < (int)(blockDim.x / 32) ? part[lane] : 0.0f;
    v = cuda::warp_sum(v);
    if (lane == 0) out[0] += v;
  }
}

// Calls f(T{}) with T the storage type of dtype (F32 or BF16).
template <class F>
void with_type(DType dt, const char* op, F f) {
  if (dt == DType::F32)
    f(float{});
  else if (dt == DType::BF16)
    f(__nv_bfloat16{});
  else
    throw_error(ErrorKind::Unsupported, op, ": unsupported dtype ", dtype_name(dt), " (F32 or BF16)");
}

unsigned blocks_for(int64_t R) {
  return (unsigned)((R + kRowsPerBlock - 1) / kRowsPerBlock);
}

}  // namespace

void adaption_rows_forward_cuda(Tensor& probs, Tensor& w, const Tensor& s, int64_t Hq, int64_t Hkv,
                                int64_t Lp, float scale, float gate) {
  const int64_t R = probs.numel() / Lp;
  if (R == 0) return;
  with_type(w.dtype(), "adaption_attention_forward", [&](auto tw) {
    using TW = decltype(tw);
    rows_forward_kernel<TW><<<blocks_for(R), 32 * kRowsPerBlock, 0, cuda::stream()>>>(
        probs.data<float>(), w.data<TW>(), s.data<float>(), R, (int)Hq, (int)Hkv, (int)Lp, scale, gate);
  });
  QT_CUDA_CHECK_LAUNCH("adaption rows_forward_kernel");
}

void adaption_rows_backward_cuda(Tensor& z, Tensor& w, Tensor* dgate, const Tensor& ds, const Tensor& probs,
                                 int64_t Hq, int64_t Hkv, int64_t Lp, float scale, float gate) {
  const char* op = "adaption_attention_backward";
  const int64_t R = probs.numel() / Lp;
  if (R == 0) return;
  Tensor rowg = dgate ? Tensor::empty({R}, DType::F32, Device::CUDA) : Tensor();
  with_type(z.dtype(), op, [&](auto tz) {
    using TZ = decltype(tz);
    with_type(w.dtype(), op, [&](auto tw) {
      using TW = decltype(tw);
      rows_backward_kernel<TZ, TW><<<blocks_for(R), 32 * kRowsPerBlock, 0, cuda::stream()>>>(
          z.data<TZ>(), w.data<TW>(), dgate ? rowg.data<float>() : nullptr, ds.data<float>(),
          probs.data<float>(), R, (int)Hq, (int)Hkv, (int)Lp, scale, gate);
    });
  });
  QT_CUDA_CHECK_LAUNCH("adaption rows_backward_kernel");
  if (dgate) {
    sum_into_kernel<<<1, 1024, 0, cuda::stream()>>>(dgate->data<float>(), rowg.data<float>(), R);
    QT_CUDA_CHECK_LAUNCH("adaption sum_into_kernel");
  }
}

}  // namespace qtune
