// Sum of squares and in-place scaling of device gradients for clip_grad_norm (see clip_cuda.h). Kernels
// run on the legacy default stream, ordered with the model's kernels (a blocking stream).
#include <cuda_runtime.h>

#include "core/allocator.h"
#include "core/error.h"
#include "optim/cuda/clip_cuda.h"

namespace qtune {
namespace {

constexpr int kThreads = 256;

// out[0] += Σ x[i]² over this grid's share (f64 partial sums, one atomic per block).
__global__ void sum_squares_kernel(const float* __restrict__ x, int64_t n, double* out) {
  double s = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    s += (double)x[i] * (double)x[i];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  __shared__ double part[kThreads / 32];
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < kThreads / 32; w++) t += part[w];
    atomicAdd(out, t);
  }
}

__global__ void scale_kernel(float* __restrict__ x, int64_t n, float s) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    x[i] = x[i] * s;
}

int blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return (int)(b < 1024 ? (b < 1 ? 1 : b) : 1024);
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_error(ErrorKind::Cuda, what, " failed: ", cudaGetErrorString(e));
}

}  // namespace

std::vector<double> sum_squares_cuda(const std::vector<const float*>& xs, const std::vector<int64_t>& ns) {
  const size_t k = xs.size();
  std::vector<double> out(k, 0.0);
  if (k == 0) return out;
  double* acc = static_cast<double*>(device_malloc(k * sizeof(double)));
  zero_bytes(acc, Device::CUDA, k * sizeof(double));
  for (size_t i = 0; i < k; i++)
    if (ns[i] > 0) sum_squares_kernel<<<blocks_for(ns[i]), kThreads>>>(xs[i], ns[i], acc + i);
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaMemcpy(out.data(), acc, k * sizeof(double), cudaMemcpyDeviceToHost);
  device_free(acc);
  check(e, "sum_squares_cuda");
  return out;
}

void scale_cuda(float* x, int64_t n, float s) {
  if (n <= 0) return;
  scale_kernel<<<blocks_for(n), kThreads>>>(x, n, s);
  check(cudaGetLastError(), "scale_cuda");
}

}  // namespace qtune
