// argmax_key_cuda (sampling_cuda.h). Each logit maps to a 64-bit key whose order is qtune::argmax's
// preference: the value's bits made order-preserving as an unsigned integer in the high half, the
// complement of the index in the low half (so among equal values the first index has the largest key).
// One atomicMax per warp then leaves the winner's key; no pass over partial results is needed.
#include <algorithm>

#include "core/allocator.h"
#include "core/error.h"
#include "model/cuda/sampling_cuda.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_graph.h"

namespace qtune {

namespace {

__device__ __forceinline__ unsigned long long order_key(float v, int i) {
  uint32_t hi;
  if (v != v) {
    hi = i == 0 ? 0xFFFFFFFFu : 0u;  // argmax's scan: nothing beats a NaN at 0; a later NaN never wins
  } else {
    uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);  // -0 ties with +0
    hi = (u & 0x80000000u) ? ~u : (u | 0x80000000u);     // unsigned order = float order
  }
  return (unsigned long long)hi << 32 | (0xFFFFFFFFu - (uint32_t)i);
}

constexpr int kThreads = 256;

__global__ void argmax_key_kernel(const float* __restrict__ x, int n, unsigned long long* key) {
  unsigned long long best = 0;
  for (int i = blockIdx.x * kThreads + threadIdx.x; i < n; i += gridDim.x * kThreads) {
    const unsigned long long k = order_key(__ldg(x + i), i);
    best = k > best ? k : best;
  }
  for (int d = 16; d > 0; d >>= 1) {
    const unsigned long long o = __shfl_xor_sync(0xffffffffu, best, d);
    best = o > best ? o : best;
  }
  if ((threadIdx.x & 31) == 0 && best) atomicMax(key, best);
}

}  // namespace

void argmax_key_cuda(uint64_t* key, const Tensor& logits) {
  cuda::require_cuda(logits, "argmax_key_cuda", "logits");
  cuda::require_dtype(logits, "argmax_key_cuda", "logits", DType::F32);
  const int n = cuda::checked_int(logits.numel(), "argmax_key_cuda");
  if (n == 0) throw_error(ErrorKind::Usage, "argmax_key_cuda: no logits");
  cudaStream_t s = cuda::stream();
  QT_CUDA_CHECK(cudaMemsetAsync(key, 0, sizeof(uint64_t), s));
  // About 4 loads per thread at the vocabularies of today's models; enough blocks to spread them.
  const int blocks = std::max(1, std::min(cuda::context().num_sms, (n + 4 * kThreads - 1) / (4 * kThreads)));
  argmax_key_kernel<<<blocks, kThreads, 0, s>>>(logits.data<float>(), n,
                                                reinterpret_cast<unsigned long long*>(key));
  QT_CUDA_CHECK_LAUNCH("argmax_key_kernel");
}

GreedyPicker::GreedyPicker()
    : key_(Tensor::zeros({2}, DType::I32, Device::CUDA)),
      host_(host_pinned_malloc(sizeof(uint64_t)), host_pinned_free) {}

int32_t GreedyPicker::pick(const Tensor& logits) {
  argmax_key_cuda(key_.data<uint64_t>(), logits);
  cuda::copy_to_host_sync(host_.get(), key_.raw(), sizeof(uint64_t));
  return argmax_key_index(*static_cast<const uint64_t*>(host_.get()));
}

}  // namespace qtune
