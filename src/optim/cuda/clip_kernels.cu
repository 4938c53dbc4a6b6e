// Sum of squares, in-place scaling and zeroing of device gradients (clip_grad_norm, zero_grads; see
// clip_cuda.h). Kernels
// run on the legacy default stream, ordered with the model's kernels (a blocking stream).
#include <cuda_runtime.h>

#include <algorithm>

#include "core/allocator.h"
#include "core/error.h"
#include "optim/cuda/clip_cuda.h"

namespace qtune {
namespace {

constexpr int kThreads = 256;

// The gradients of one clip call as chunks of at most kChunk elements, each a block's work: all tensors in
// one launch (a step clips hundreds of LoRA tensors; a launch per tensor cost more than the arithmetic).
constexpr int64_t kChunk = 1 << 16;
struct Chunk {
  float* x;
  int64_t n;
  int tensor;
};

// acc[c.tensor] += Σ x² over chunk blockIdx.x (f64 partial sums, one atomic per block).
__global__ void sum_squares_kernel(const Chunk* __restrict__ chunks, double* acc) {
  const Chunk c = chunks[blockIdx.x];
  double s = 0;
  for (int64_t i = threadIdx.x; i < c.n; i += blockDim.x) s += (double)c.x[i] * (double)c.x[i];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  __shared__ double part[kThreads / 32];
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < kThreads / 32; w++) t += part[w];
    atomicAdd(acc + c.tensor, t);
  }
}

__global__ void zero_kernel(const Chunk* __restrict__ chunks) {
  const Chunk c = chunks[blockIdx.x];
  for (int64_t i = threadIdx.x; i < c.n; i += blockDim.x) c.x[i] = 0.0f;
}

__global__ void scale_kernel(const Chunk* __restrict__ chunks, float s) {
  const Chunk c = chunks[blockIdx.x];
  for (int64_t i = threadIdx.x; i < c.n; i += blockDim.x) c.x[i] = c.x[i] * s;
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_error(ErrorKind::Cuda, what, " failed: ", cudaGetErrorString(e));
}

// The chunk table of xs on the device (caller frees), and its length.
Chunk* upload_chunks(const std::vector<float*>& xs, const std::vector<int64_t>& ns, int* count) {
  std::vector<Chunk> host;
  for (size_t i = 0; i < xs.size(); i++)
    for (int64_t o = 0; o < ns[i]; o += kChunk)
      host.push_back({xs[i] + o, std::min(kChunk, ns[i] - o), (int)i});
  *count = (int)host.size();
  if (host.empty()) return nullptr;
  Chunk* dev = static_cast<Chunk*>(device_malloc(host.size() * sizeof(Chunk)));
  check(cudaMemcpy(dev, host.data(), host.size() * sizeof(Chunk), cudaMemcpyHostToDevice),
        "clip chunk table");
  return dev;
}

}  // namespace

std::vector<double> sum_squares_cuda(const std::vector<float*>& xs, const std::vector<int64_t>& ns) {
  const size_t k = xs.size();
  std::vector<double> out(k, 0.0);
  int count = 0;
  Chunk* chunks = upload_chunks(xs, ns, &count);
  if (!chunks) return out;
  double* acc = static_cast<double*>(device_malloc(k * sizeof(double)));
  zero_bytes(acc, Device::CUDA, k * sizeof(double));
  sum_squares_kernel<<<count, kThreads>>>(chunks, acc);
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaMemcpy(out.data(), acc, k * sizeof(double), cudaMemcpyDeviceToHost);
  device_free(acc);
  device_free(chunks);
  check(e, "sum_squares_cuda");
  return out;
}

void scale_cuda(const std::vector<float*>& xs, const std::vector<int64_t>& ns, float s) {
  int count = 0;
  Chunk* chunks = upload_chunks(xs, ns, &count);
  if (!chunks) return;
  scale_kernel<<<count, kThreads>>>(chunks, s);
  // Freeing the table at once is safe: every later kernel runs on a blocking stream, which waits for this
  // legacy-stream launch.
  device_free(chunks);
  check(cudaGetLastError(), "scale_cuda");
}

void zero_cuda(const std::vector<float*>& xs, const std::vector<int64_t>& ns) {
  int count = 0;
  Chunk* chunks = upload_chunks(xs, ns, &count);
  if (!chunks) return;
  zero_kernel<<<count, kThreads>>>(chunks);
  device_free(chunks);  // safe at once, as in scale_cuda
  check(cudaGetLastError(), "zero_cuda");
}

}  // namespace qtune
