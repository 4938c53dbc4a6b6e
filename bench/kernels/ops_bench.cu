// Workbench for the CUDA forward ops on Llama-3-8B shapes: copy bandwidth (the ceiling), the decode GEMV
// against cuBLASLt at N = 1..4 (weights rotated so the L2 never holds them), a whole layer's seven decode
// GEMVs, prefill GEMMs, and attention (prefill on the tensor cores, decode with split-K).
// Times are medians of CUDA-event timings after warm-up. Build: bench/kernels/build.sh; run on the GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "core/allocator.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"

using namespace qtune;

namespace {

// Median time in ms of fn over reps runs (after warm runs), measured with events on the ops stream.
double time_ms(const std::function<void(int)>& fn, int reps = 20, int warm = 3) {
  cudaStream_t s = cuda::stream();
  for (int i = 0; i < warm; i++) fn(i);
  std::vector<double> t;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < reps; i++) {
    cudaEventRecord(a, s);
    fn(i);
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) std::printf("CUDA error: %s\n", cudaGetErrorString(e));
  return t[t.size() / 2];
}

__global__ void fill_kernel(__nv_bfloat16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16(((h & 0xffff) / 65536.0f - 0.5f) * 0.05f);
  }
}

Tensor rand_bf16(const Shape& s, uint32_t seed) {
  Tensor t = Tensor::empty(s, DType::BF16, Device::CUDA);
  fill_kernel<<<1024, 256, 0, cuda::stream()>>>(t.data<__nv_bfloat16>(), t.numel(), seed);
  return t;
}

}  // namespace

int main() {
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

  // 1. Copy bandwidth (bytes read + written).
  size_t nbytes = 2ull << 30;
  void *src = device_malloc(nbytes), *dst = device_malloc(nbytes);
  cudaMemsetAsync(src, 1, nbytes, cuda::stream());
  double copy_ms =
      time_ms([&](int) { cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, cuda::stream()); });
  double copy_bw = 2.0 * nbytes / copy_ms / 1e6;
  std::printf("copy 2 GiB: %.3f ms, %.0f GB/s (read + write)\n", copy_ms, copy_bw);
  device_free(src);
  device_free(dst);

  // 2. Decode GEMV vs cuBLASLt per 8B matrix, weights rotated over >= 512 MB.
  struct Mat {
    const char* name;
    int64_t O, I;
  };
  std::vector<Mat> mats = {{"q/o_proj", 4096, 4096},
                           {"k/v_proj", 1024, 4096},
                           {"gate/up", 14336, 4096},
                           {"down", 4096, 14336},
                           {"lm_head", 128256, 4096}};
  std::printf("\n%-10s %3s %10s %10s %10s %10s\n", "matrix", "N", "gemv ms", "GB/s", "cublasLt", "GB/s");
  for (const Mat& m : mats) {
    size_t wbytes = m.O * m.I * 2;
    int copies = (int)std::max<size_t>(1, (512ull << 20) / wbytes + 1);
    std::vector<Tensor> ws;
    for (int c = 0; c < copies; c++) ws.push_back(rand_bf16({m.O, m.I}, 17 + c));
    for (int N : {1, 2, 4}) {
      Tensor x = rand_bf16({N, m.I}, 5), out = Tensor::empty({N, m.O}, DType::BF16, Device::CUDA);
      double g = time_ms([&](int i) { cuda::linear_forward(out, x, ws[i % copies]); });
      double c = time_ms([&](int i) { cuda::linear_forward_cublaslt(out, x, ws[i % copies]); });
      std::printf("%-10s %3d %10.4f %10.0f %10.4f %10.0f\n", m.name, N, g, wbytes / g / 1e6, c,
                  wbytes / c / 1e6);
    }
  }

  // 3. One decoder layer's seven GEMVs in sequence (436 MB of weights), two layers alternating.
  {
    std::vector<std::vector<Tensor>> layers(2);
    Shape shapes[7] = {{4096, 4096},  {1024, 4096},  {1024, 4096}, {4096, 4096},
                       {14336, 4096}, {14336, 4096}, {4096, 14336}};
    size_t layer_bytes = 0;
    for (auto& s : shapes) layer_bytes += shape_numel(s) * 2;
    for (int l = 0; l < 2; l++)
      for (int j = 0; j < 7; j++) layers[l].push_back(rand_bf16(shapes[j], 100 + l * 7 + j));
    Tensor x4096 = rand_bf16({1, 4096}, 1), x14336 = rand_bf16({1, 14336}, 2);
    Tensor o4096 = Tensor::empty({1, 4096}, DType::BF16, Device::CUDA);
    Tensor o1024 = Tensor::empty({1, 1024}, DType::BF16, Device::CUDA);
    Tensor o14336 = Tensor::empty({1, 14336}, DType::BF16, Device::CUDA);
    auto layer = [&](int i) {
      auto& L = layers[i % 2];
      cuda::linear_forward(o4096, x4096, L[0]);
      cuda::linear_forward(o1024, x4096, L[1]);
      cuda::linear_forward(o1024, x4096, L[2]);
      cuda::linear_forward(o4096, x4096, L[3]);
      cuda::linear_forward(o14336, x4096, L[4]);
      cuda::linear_forward(o14336, x4096, L[5]);
      cuda::linear_forward(o4096, x14336, L[6]);
    };
    double ms = time_ms(layer, 30);
    double bw = layer_bytes / ms / 1e6;
    std::printf("\n8B layer decode GEMVs (%.1f MB): %.4f ms, %.0f GB/s = %.1f%% of copy bandwidth\n",
                layer_bytes / 1e6, ms, bw, 100.0 * bw / copy_bw);
  }

  // 4. Prefill GEMMs (cuBLASLt), N = 2048 tokens.
  std::printf("\n");
  for (const Mat& m : {Mat{"q/o_proj", 4096, 4096}, Mat{"gate/up", 14336, 4096}, Mat{"down", 4096, 14336}}) {
    int64_t N = 2048;
    Tensor x = rand_bf16({N, m.I}, 3), w = rand_bf16({m.O, m.I}, 4);
    Tensor out = Tensor::empty({N, m.O}, DType::BF16, Device::CUDA);
    double ms = time_ms([&](int) { cuda::linear_forward(out, x, w); });
    std::printf("GEMM N=%lld %-9s: %.4f ms, %.0f TFLOP/s\n", (long long)N, m.name, ms,
                2.0 * N * m.O * m.I / ms / 1e9);
  }

  // 5. Attention, 8B heads (32 q / 8 kv, D 128).
  std::printf("\n");
  for (int T : {512, 2048, 4096}) {
    Tensor q = rand_bf16({1, T, 32, 128}, 7), k = rand_bf16({1, T, 8, 128}, 8),
           v = rand_bf16({1, T, 8, 128}, 9);
    Tensor out = Tensor::empty({1, T, 32, 128}, DType::BF16, Device::CUDA);
    double ms = time_ms([&](int) { cuda::attention_forward(out, q, k, v, 0, T); }, 10);
    double flops = 4.0 * 32 * 128 * (double)T * (T + 1) / 2;  // causal: QK and PV over the lower triangle
    std::printf("attention prefill T=%d: %.4f ms, %.0f TFLOP/s (tensor cores)\n", T, ms, flops / ms / 1e9);
    if (T == 512) {
      double ms2 = time_ms([&](int) { cuda::attention_forward_split(out, q, k, v, 0, T, true); }, 5);
      std::printf("attention prefill T=%d on the split-K kernel: %.4f ms\n", T, ms2);
    }
  }
  for (int B : {1, 8})
    for (int S : {1024, 8192, 32768}) {
      Tensor q = rand_bf16({B, 1, 32, 128}, 7), k = rand_bf16({B, S, 8, 128}, 8),
             v = rand_bf16({B, S, 8, 128}, 9);
      Tensor out = Tensor::empty({B, 1, 32, 128}, DType::BF16, Device::CUDA);
      double ms = time_ms([&](int) { cuda::attention_forward(out, q, k, v, S - 1, S); });
      double bytes = 2.0 * B * S * 8 * 128 * 2;
      std::printf("attention decode B=%d kv=%d: %.4f ms, %.0f GB/s of K/V\n", B, S, ms, bytes / ms / 1e6);
    }
  cuda::synchronize();
  return 0;
}
