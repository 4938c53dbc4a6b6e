// Workbench for the LoRA products of a QLoRA training step on Llama-3-8B shapes (issue 6): sequence 2048,
// r 16, dropout 0.05, the seven projections. Forward: mid = (m ⊙ x)·Aᵀ, out += s·mid·Bᵀ (beta 1); backward:
// h = (m ⊙ x)·Aᵀ, dh = s·dy·B, dB += s·dyᵀ·h, dA += dhᵀ·(m ⊙ x), dx += m ⊙ (dh·A); BF16 inputs, F32
// gradients of A and B, dx F32 (q/k/v/gate/up) or BF16 (o, down) as the training Block keeps it. Two ways:
//   cublas: the dropped copy of x (lora_dropout_cuda) and the library's matmul (cuBLASLt, skinny-shape
//           autotuning); dx through a BF16 temporary, the mask and an add (the path before train/lora_fused);
//   fused:  what train/lora_train does with dropout: the train/lora_fused kernels (mask applied while
//           reading) for the products that read x; cuBLASLt for out += s·mid·Bᵀ, dh and dB. Rows marked
//           "info" time the fused kernels on dh and dB too, and dx without a mask (not in the totals).
// Each call: median µs of CUDA events around 20 queued calls (enqueued behind a spin kernel, so the GPU time
// alone) and the bytes it must move as a fraction of the copy bandwidth. Build: bench/kernels/build.sh.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <vector>

#include "core/allocator.h"
#include "ops/cuda/cuda_context.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "train/cuda/lora_dropout.h"
#include "train/lora_fused.h"

using namespace qtune;

namespace {

// Keeps the GPU busy for about `ns` nanoseconds, so the calls queued behind it are all enqueued before the
// first one starts: the events around them then time the GPU alone, not the host's enqueue rate.
__global__ void spin(int64_t ns) {
  const int64_t t0 = clock64();
  while (clock64() - t0 < ns * 2) {  // ~2 cycles per ns at the H200's clock
  }
}

// Median µs per call over reps timings of `batch` back-to-back calls (batch 1: the call alone, including the
// host's enqueue latency; batch 20: the GPU time of a call queued behind others, as inside a training step,
// the calls enqueued while a spin kernel holds the GPU).
double time_us(const std::function<void()>& fn, int batch = 1, int reps = 20) {
  cudaStream_t s = cuda::stream();
  for (int i = 0; i < 3; i++) fn();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<double> t;
  for (int i = 0; i < reps; i++) {
    if (batch > 1) spin<<<1, 1, 0, s>>>(2000000);
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
  const double copy_us =
      time_us([&] { cudaMemcpyAsync(dst, src, 1ull << 30, cudaMemcpyDeviceToDevice, cuda::stream()); });
  const double bw = 2.0 * (1ull << 30) / copy_us / 1e3;  // GB/s
  std::printf("copy bandwidth %.0f GB/s\n", bw);
  struct Lin {
    const char* name;
    int64_t I, O;
    DType dx;
  } lins[] = {{"q", 4096, 4096, DType::F32},     {"k", 4096, 1024, DType::F32},
              {"v", 4096, 1024, DType::F32},     {"o", 4096, 4096, DType::BF16},
              {"gate", 4096, 14336, DType::F32}, {"up", 4096, 14336, DType::F32},
              {"down", 14336, 4096, DType::BF16}};
  double tot[2][2] = {}, ideal[2] = {};  // [cublas, fused][fwd, bwd]
  std::printf("%-5s %-7s %-24s %9s %9s %6s\n", "proj", "path", "call", "us", "ideal us", "of bw");
  for (const Lin& l : lins) {
    Tensor x = filled({N, l.I}, DType::BF16), dy = filled({N, l.O}, DType::BF16);
    Tensor A = filled({r, l.I}, DType::BF16), B = filled({l.O, r}, DType::BF16);
    Tensor At = filled({l.I, r}, DType::BF16), Bt = filled({r, l.O}, DType::BF16);
    Tensor xd = filled({N, l.I}, DType::BF16), t = filled({N, l.I}, DType::BF16);
    Tensor mid = filled({N, r}, DType::BF16), dh = filled({N, r}, DType::BF16);
    Tensor out = filled({N, l.O}, DType::BF16), dx = filled({N, l.I}, l.dx);
    Tensor gA = filled({r, l.I}, DType::F32), gB = filled({l.O, r}, DType::F32);
    const LoraMask m = lora_mask(12345, 0, l.I, 0.05);
    const double xb = N * l.I * 2.0, yb = N * l.O * 2.0, dxb = N * l.I * (l.dx == DType::F32 ? 8.0 : 4.0);
    struct G {
      int path;  // 0 cublas, 1 fused, 2 fused (info)
      bool fwd;
      const char* what;
      double bytes;
      std::function<void()> fn;
    } gs[] = {
        {0, true, "xd = m ⊙ x (copy)", 2 * xb, [&] { lora_dropout_cuda(xd, x, m); }},
        {0, true, "mid = xd·Aᵀ", xb, [&] { matmul(mid, xd, A, false, true); }},
        {0, true, "out += s·mid·Bᵀ", 2 * yb, [&] { matmul(out, mid, B, false, true, 2.0f, 1.0f); }},
        {0, false, "xd = m ⊙ x (copy)", 2 * xb, [&] { lora_dropout_cuda(xd, x, m); }},
        {0, false, "h = xd·Aᵀ", xb, [&] { matmul(mid, xd, A, false, true); }},
        {0, false, "dh = s·dy·B", yb, [&] { matmul(dh, dy, B, false, false, 2.0f); }},
        {0, false, "dB += s·dyᵀ·h", yb, [&] { matmul(gB, dy, mid, true, false, 2.0f, 1.0f); }},
        {0, false, "dA += dhᵀ·xd", xb, [&] { matmul(gA, dh, xd, true, false, 1.0f, 1.0f); }},
        {0, false, "dx += m ⊙ dh·A (3 calls)", dxb,
         [&] {
           matmul(t, dh, A, false, false);
           lora_dropout_cuda(t, t, m);
           add_inplace(dx, t);
         }},
        {1, true, "mid = (m ⊙ x)·Aᵀ", xb, [&] { lora_down(mid, x, A, 1.0f, &m); }},
        {1, true, "out += s·mid·Bᵀ", 2 * yb, [&] { matmul(out, mid, B, false, true, 2.0f, 1.0f); }},
        {1, false, "h = (m ⊙ x)·Aᵀ", xb, [&] { lora_down(mid, x, A, 1.0f, &m); }},
        {1, false, "dh = s·dy·B", yb, [&] { matmul(dh, dy, B, false, false, 2.0f); }},
        {1, false, "dB += s·dyᵀ·h", yb, [&] { matmul(gB, dy, mid, true, false, 2.0f, 1.0f); }},
        {1, false, "dA += dhᵀ·(m ⊙ x)", xb, [&] { lora_down_grad(gA, dh, x, 1.0f, &m, false); }},
        {1, false, "dx += m ⊙ (dh·A)", dxb, [&] { lora_up_dx(dx, dh, At, &m); }},
        {2, false, "dh = s·dy·B (lora_down)", yb, [&] { lora_down(dh, dy, Bt, 2.0f, nullptr); }},
        {2, false, "dB (lora_down_grad)", yb, [&] { lora_down_grad(gB, mid, dy, 2.0f, nullptr, true); }},
        {2, false, "dx += dh·A (no mask)", dxb, [&] { lora_up_dx(dx, dh, At, nullptr); }},
    };
    for (G& g : gs) {
      const double us = time_us(g.fn, 20), id = g.bytes / bw / 1e3;
      std::printf("%-5s %-7s %-24s %9.1f %9.1f %5.0f%%\n", l.name,
                  g.path == 0   ? "cublas"
                  : g.path == 1 ? "fused"
                                : "info",
                  g.what, us, id, 100 * id / us);
      if (g.path == 2) continue;
      tot[g.path][g.fwd ? 0 : 1] += us;
      if (g.path == 1) ideal[g.fwd ? 0 : 1] += id;
    }
  }
  for (int p = 0; p < 2; p++)
    std::printf(
        "%s per layer: forward %.0f us, backward %.0f us; 32 layers, forward twice + backward: %.1f ms\n",
        p ? "fused " : "cublas", tot[p][0], tot[p][1], 32 * (2 * tot[p][0] + tot[p][1]) / 1e3);
  std::printf("traffic bound: forward %.0f us, backward %.0f us per layer; %.1f ms per step\n", ideal[0],
              ideal[1], 32 * (2 * ideal[0] + ideal[1]) / 1e3);
  return 0;
}
