// Chunked cross-entropy of the LM head on the GPU (ops/loss.h), the CPU algorithm with cuBLASLt GEMMs:
// per chunk of R rows, logits [R, V] = h·Wᵀ in W's dtype (a bf16 model's logits are bf16, as transformers'
// LM head gives them before the loss upcasts; f32 math from there); one block per row finds the
// log-sum-exp and the loss and
// writes grad_scale·(softmax − onehot(label)) in W's dtype (zero rows for ignored labels); then
// dh[R, C] += dlogits·W and dW[V, C] += dlogitsᵀ·h. Only one [R, V] logits chunk (and its gradient) exist.
// Row losses go to a device buffer; the host reads them once, after the last chunk.
#include <vector>

#include "core/allocator.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"
#include "ops/loss.h"

namespace qtune {
namespace cuda {
namespace {

constexpr int kThreads = 512;

__device__ float block_reduce(float v, bool is_max) {
  __shared__ float part[kThreads / 32];
  __shared__ float result;
  v = is_max ? warp_max(v) : warp_sum(v);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float t = threadIdx.x < kThreads / 32 ? part[threadIdx.x] : (is_max ? -INFINITY : 0.0f);
    t = is_max ? warp_max(t) : warp_sum(t);
    if (threadIdx.x == 0) result = t;
  }
  __syncthreads();
  float r = result;
  __syncthreads();  // result and part are reused by the next call
  return r;
}

// Row r of logits [rows, V]: loss[r] = lse − z[label] (0 when ignored); dlogits[r] as described above.
template <class TL, class TG>
__global__ void xent_rows_kernel(const TL* __restrict__ logits, const int32_t* __restrict__ labels,
                                 TG* __restrict__ dlogits, float* __restrict__ loss, int64_t V,
                                 float grad_scale, bool grads) {
  const int64_t r = blockIdx.x;
  const TL* z = logits + r * V;
  TG* dz = dlogits ? dlogits + r * V : nullptr;
  const int32_t y = labels[r];
  if (y == kIgnoreIndex) {
    if (threadIdx.x == 0) loss[r] = 0.0f;
    if (grads)
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) dz[j] = from_f32<TG>(0.0f);
    return;
  }
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, to_f32(z[j]));
  mx = block_reduce(mx, true);
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += __expf(to_f32(z[j]) - mx);
  s = block_reduce(s, false);
  const float lse = mx + logf(s);
  if (threadIdx.x == 0) loss[r] = lse - to_f32(z[y]);
  if (!grads) return;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    float g = grad_scale * __expf(to_f32(z[j]) - lse);
    if (j == y) g -= grad_scale;
    dz[j] = from_f32<TG>(g);
  }
}

}  // namespace

LossSum cross_entropy_forward_backward(const Tensor& hidden, const Tensor& lm_head, const Tensor& labels,
                                       Tensor* dhidden, Tensor* dlm_head, float grad_scale,
                                       int64_t chunk_rows) {
  const char* op = "cross_entropy";
  require_cuda(hidden, op, "hidden");
  require_cuda(lm_head, op, "lm_head");
  require_cuda(labels, op, "labels");
  if (hidden.dtype() != lm_head.dtype())
    throw_error(ErrorKind::Shape, op, ": hidden ", hidden.describe(), " and lm_head ", lm_head.describe(),
                " must share a dtype");
  const int64_t V = lm_head.size(0), C = lm_head.size(1), N = hidden.numel() / C;
  const bool grads = dhidden || dlm_head;
  Tensor h2 = hidden.reshape({N, C});
  Tensor dh2 = dhidden ? dhidden->reshape({N, C}) : Tensor();
  const int64_t R = std::min(std::max<int64_t>(1, chunk_rows), std::max<int64_t>(1, N));
  Tensor logits = Tensor::empty({R, V}, lm_head.dtype(), Device::CUDA);                      // [R, V]
  Tensor dlogits = grads ? Tensor::empty({R, V}, lm_head.dtype(), Device::CUDA) : Tensor();  // [R, V]
  Tensor row_loss = Tensor::zeros({N}, DType::F32, Device::CUDA);
  Tensor host_labels = labels.to(Device::CPU);
  const int32_t* y = host_labels.data<int32_t>();
  for (int64_t n0 = 0; n0 < N; n0 += R) {
    const int64_t rows = std::min(R, N - n0);
    bool any = false;
    for (int64_t r = 0; r < rows; r++) any |= y[n0 + r] != kIgnoreIndex;
    if (!any) continue;                  // every label ignored: no loss, no gradient
    Tensor hc = h2.slice0(n0, rows);     // [rows, C]
    Tensor lg = logits.slice0(0, rows);  // [rows, V]
    matmul(lg, hc, lm_head, false, true, 1.0f, 0.0f);
    Tensor dlg = grads ? dlogits.slice0(0, rows) : Tensor();
    QT_DISPATCH_FLOAT(lm_head.dtype(), op, TG, {
      xent_rows_kernel<TG, TG><<<(unsigned)rows, kThreads, 0, stream()>>>(
          lg.data<TG>(), labels.data<int32_t>() + n0, grads ? dlg.data<TG>() : nullptr,
          row_loss.data<float>() + n0, V, grad_scale, grads);
    });
    QT_CUDA_CHECK_LAUNCH("xent_rows_kernel");
    if (dhidden) {
      Tensor dhc = dh2.slice0(n0, rows);  // [rows, C]
      matmul(dhc, dlg, lm_head, false, false, 1.0f, 1.0f);
    }
    if (dlm_head) matmul(*dlm_head, dlg, hc, true, false, 1.0f, 1.0f);
  }
  std::vector<float> losses = row_loss.to_f32_vector();  // waits for the stream
  LossSum total;
  for (int64_t n = 0; n < N; n++)
    if (y[n] != kIgnoreIndex) {
      total.loss += losses[n];
      total.count++;
    }
  return total;
}

}  // namespace cuda
}  // namespace qtune
