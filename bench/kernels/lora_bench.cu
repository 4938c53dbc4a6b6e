// Workbench for the LoRA GEMMs of a QLoRA training step on Llama-3-8B shapes (issue 6): sequence 2048, r 16,
// the seven projections. Forward: mid = x·Aᵀ, out += s·mid·Bᵀ (beta 1); backward: h = x·Aᵀ, dh = s·dy·B,
// dB += s·dyᵀ·h, dA += dhᵀ·x, dx += dh·A — through the library's matmul (ops/matmul.h, cuBLASLt with the
// skinny-shape autotuning), BF16 inputs, F32 gradients of A and B, F32 dx as the training Block keeps it.
// Each GEMM: median µs of CUDA events and the bytes it must move as a fraction of the copy bandwidth.
// Build: bench/kernels/build.sh (builds this too); run on the GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <vector>

#include "core/allocator.h"
#include "ops/cuda/cuda_context.h"
#include "ops/matmul.h"

using namespace qtune;

namespace {

// Median µs per call over reps timings of `batch` back-to-back calls (batch 1: the call alone, including the
// host's enqueue latency; batch 20: the GPU time of a call queued behind others, as inside a training step).
double time_us(const std::function<void()>& fn, int batch = 1, int reps = 20) {
  cudaStream_t s = cuda::stream();
  for (int i = 0; i < 3; i++) fn();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<double> t;
  for (int i = 0; i < reps; i++) {
    cudaEventRecord(a, s);
    for (int j = 0; j < batch; j++) fn();
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms * 1e3 / batch);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

Tensor filled(const Shape& s, DType dt) {
  Tensor t = Tensor::empty(s, dt, Device::CUDA);
  cudaMemsetAsync(t.raw(), 0x3c, t.nbytes(), cuda::stream());  // small finite values in bf16 and f32
  return t;
}

}  // namespace

int main() {
  const int64_t N = 2048, r = 16;
  void *src = device_malloc(1ull << 30), *dst = device_malloc(1ull << 30);
  const double copy_us = time_us([&] { cudaMemcpyAsync(dst, src, 1ull << 30, cudaMemcpyDeviceToDevice, cuda::stream()); });
  const double bw = 2.0 * (1ull << 30) / copy_us / 1e3;  // GB/s
  std::printf("copy bandwidth %.0f GB/s\n", bw);
  struct Lin {
    const char* name;
    int64_t I, O;
  } lins[] = {{"q", 4096, 4096}, {"k", 4096, 1024}, {"v", 4096, 1024}, {"o", 4096, 4096},
              {"gate", 4096, 14336}, {"up", 4096, 14336}, {"down", 14336, 4096}};
  double fwd_total = 0, bwd_total = 0, fwd_ideal = 0, bwd_ideal = 0;
  std::printf("%-5s %-18s %9s %9s %9s %6s\n", "proj", "GEMM", "us alone", "us queued", "ideal us", "of bw");
  for (const Lin& l : lins) {
    Tensor x = filled({N, l.I}, DType::BF16), dy = filled({N, l.O}, DType::BF16);
    Tensor A = filled({r, l.I}, DType::BF16), B = filled({l.O, r}, DType::BF16);
    Tensor mid = filled({N, r}, DType::BF16), dh = filled({N, r}, DType::BF16);
    Tensor out = filled({N, l.O}, DType::BF16), dx = filled({N, l.I}, DType::F32);
    Tensor gA = filled({r, l.I}, DType::F32), gB = filled({l.O, r}, DType::F32);
    const double xb = N * l.I * 2.0, yb = N * l.O * 2.0;
    struct G {
      const char* what;
      bool fwd;
      double bytes;
      std::function<void()> fn;
    } gs[] = {
        {"mid = x·Aᵀ", true, xb, [&] { matmul(mid, x, A, false, true); }},
        {"out += s·mid·Bᵀ", true, 2 * yb, [&] { matmul(out, mid, B, false, true, 2.0f, 1.0f); }},
        {"h = x·Aᵀ", false, xb, [&] { matmul(mid, x, A, false, true); }},
        {"dh = s·dy·B", false, yb, [&] { matmul(dh, dy, B, false, false, 2.0f); }},
        {"dB += s·dyᵀ·h", false, yb, [&] { matmul(gB, dy, mid, true, false, 2.0f, 1.0f); }},
        {"dA += dhᵀ·x", false, xb, [&] { matmul(gA, dh, x, true, false, 1.0f, 1.0f); }},
        {"dx += dh·A", false, 2 * xb * 2, [&] { matmul(dx, dh, A, false, false, 1.0f, 1.0f); }},
    };
    for (G& g : gs) {
      const double alone = time_us(g.fn), us = time_us(g.fn, 20), ideal = g.bytes / bw / 1e3;
      std::printf("%-5s %-18s %9.1f %9.1f %9.1f %5.0f%%\n", l.name, g.what, alone, us, ideal, 100 * ideal / us);
      (g.fwd ? fwd_total : bwd_total) += us;
      (g.fwd ? fwd_ideal : bwd_ideal) += ideal;
    }
  }
  std::printf("per layer: forward %.0f us (ideal %.0f), backward %.0f us (ideal %.0f)\n", fwd_total, fwd_ideal,
              bwd_total, bwd_ideal);
  std::printf("32 layers, forward twice (checkpointing) + backward: %.1f ms (ideal %.1f)\n",
              32 * (2 * fwd_total + bwd_total) / 1e3, 32 * (2 * fwd_ideal + bwd_ideal) / 1e3);
  return 0;
}
