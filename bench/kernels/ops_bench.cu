// Workbench for the CUDA forward ops on Llama-3-8B shapes: copy bandwidth (the ceiling), the decode GEMV
// against cuBLASLt at N = 1..4 (weights rotated so the L2 never holds them), a whole layer's seven decode
// GEMVs, prefill GEMMs, and attention (prefill on the tensor cores, decode with split-K).
// Times are medians of CUDA-event timings after warm-up. Build: bench/kernels/build.sh; run on the GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
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

// Version 1 of the decode GEMV (kept here for comparison; the library now has version 2: sixteen loads
// in flight, weights prefetched under a programmatic dependent launch): 8 loads in flight, N = 1.
__global__ void __launch_bounds__(128)
    gemv_v1(__nv_bfloat16* out, const __nv_bfloat16* x, const __nv_bfloat16* w, int I, int O) {
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, o = blockIdx.x * 4 + warp;
  if (o >= O) return;
  int nvec = I / 8;
  const uint4* wrow = reinterpret_cast<const uint4*>(w + (int64_t)o * I);
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  float acc = 0.0f;
  for (int base = lane; base < nvec; base += 32 * 8) {
    uint4 wv[8];
#pragma unroll
    for (int u = 0; u < 8; u++)
      wv[u] = base + u * 32 < nvec ? __ldcs(wrow + base + u * 32) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < 8; u++) {
      if (base + u * 32 >= nvec) continue;
      uint4 xx = __ldg(xv + base + u * 32);
      const __nv_bfloat162* a2 = reinterpret_cast<const __nv_bfloat162*>(&wv[u]);
      const __nv_bfloat162* b2 = reinterpret_cast<const __nv_bfloat162*>(&xx);
#pragma unroll
      for (int i = 0; i < 4; i++) {
        float2 fa = __bfloat1622float2(a2[i]), fb = __bfloat1622float2(b2[i]);
        acc = fmaf(fa.x, fb.x, fmaf(fa.y, fb.y, acc));
      }
    }
  }
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) out[o] = __float2bfloat16(acc);
}

void linear_v1(Tensor& out, const Tensor& x, const Tensor& w) {
  int O = (int)w.size(0), I = (int)w.size(1);
  gemv_v1<<<(O + 3) / 4, 128, 0, cuda::stream()>>>(out.data<__nv_bfloat16>(), x.data<__nv_bfloat16>(),
                                                   w.data<__nv_bfloat16>(), I, O);
}

// Version 3 (candidate): a persistent grid; each warp walks its rows (gw, gw + nw, ...) as one stream of
// chunks of U 16-byte loads per lane, double-buffered so the next chunk (of this row or the next) is in
// flight while the current one is multiplied. No waves of short-lived blocks, loads always in flight.
template <int U, int WARPS>
__global__ void __launch_bounds__(WARPS * 32)
    gemv_v3(__nv_bfloat16* out, const __nv_bfloat16* x, const __nv_bfloat16* w, int I, int O) {
  const int lane = threadIdx.x % 32;
  const int gw = blockIdx.x * WARPS + threadIdx.x / 32, nw = gridDim.x * WARPS;
  const int nvec = I / 8, rpr = (nvec + 32 * U - 1) / (32 * U);
  if (gw >= O) return;
  const int total = ((O - 1 - gw) / nw + 1) * rpr;
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  uint4 a[U], b[U];
  auto load = [&](uint4(&buf)[U], int c) {
    int o = gw + (c / rpr) * nw, base = (c % rpr) * 32 * U + lane;
    const uint4* wrow = reinterpret_cast<const uint4*>(w + (int64_t)o * I);
#pragma unroll
    for (int u = 0; u < U; u++)
      buf[u] = base + u * 32 < nvec ? __ldcs(wrow + base + u * 32) : make_uint4(0, 0, 0, 0);
  };
  float acc = 0.0f;
  auto compute = [&](const uint4(&buf)[U], int c) {
    int base = (c % rpr) * 32 * U + lane;
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (base + u * 32 >= nvec) continue;
      uint4 xx = __ldg(xv + base + u * 32);
      const __nv_bfloat162* a2 = reinterpret_cast<const __nv_bfloat162*>(&buf[u]);
      const __nv_bfloat162* b2 = reinterpret_cast<const __nv_bfloat162*>(&xx);
#pragma unroll
      for (int i = 0; i < 4; i++) {
        float2 fa = __bfloat1622float2(a2[i]), fb = __bfloat1622float2(b2[i]);
        acc = fmaf(fa.x, fb.x, fmaf(fa.y, fb.y, acc));
      }
    }
    if (c % rpr == rpr - 1) {
      float s = acc;
      for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (lane == 0) out[gw + (c / rpr) * nw] = __float2bfloat16(s);
      acc = 0.0f;
    }
  };
  load(a, 0);
  for (int c = 0; c < total; c += 2) {
    if (c + 1 < total) load(b, c + 1);
    compute(a, c);
    if (c + 1 >= total) break;
    if (c + 2 < total) load(a, c + 2);
    compute(b, c + 1);
  }
}

template <int U, int WARPS>
void linear_v3(Tensor& out, const Tensor& x, const Tensor& w) {
  static int per_sm = [] {
    int n = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gemv_v3<U, WARPS>, WARPS * 32, 0);
    return n;
  }();
  int O = (int)w.size(0), I = (int)w.size(1);
  int blocks = std::min((O + WARPS - 1) / WARPS, per_sm * cuda::context().num_sms);
  gemv_v3<U, WARPS><<<blocks, WARPS * 32, 0, cuda::stream()>>>(
      out.data<__nv_bfloat16>(), x.data<__nv_bfloat16>(), w.data<__nv_bfloat16>(), I, O);
}

Tensor rand_bf16(const Shape& s, uint32_t seed) {
  Tensor t = Tensor::empty(s, DType::BF16, Device::CUDA);
  fill_kernel<<<1024, 256, 0, cuda::stream()>>>(t.data<__nv_bfloat16>(), t.numel(), seed);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  const bool gemv_only = argc > 1 && std::string(argv[1]) == "gemv";
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
      if (N == 1) {
        double t1 = time_ms([&](int i) { linear_v1(out, x, ws[i % copies]); });
        double t3 = time_ms([&](int i) { linear_v3<8, 8>(out, x, ws[i % copies]); });
        double t4 = time_ms([&](int i) { linear_v3<4, 8>(out, x, ws[i % copies]); });
        double t5 = time_ms([&](int i) { linear_v3<8, 4>(out, x, ws[i % copies]); });
        Tensor ref = Tensor::empty({1, m.O}, DType::BF16, Device::CUDA);
        cuda::linear_forward(ref, x, ws[0]);
        linear_v3<8, 8>(out, x, ws[0]);
        std::vector<float> rv = ref.to_f32_vector(), ov = out.to_f32_vector();
        double num = 0, den = 0;
        for (size_t i = 0; i < rv.size(); i++) num += (ov[i] - rv[i]) * (ov[i] - rv[i]), den += rv[i] * rv[i];
        std::printf("%-10s v3 vs library: rel diff %.2e\n", m.name, std::sqrt(num / den));
        Tensor dst = Tensor::empty({m.O, m.I}, DType::BF16, Device::CUDA);
        double tc = time_ms([&](int i) {
          cudaMemcpyAsync(dst.raw(), ws[i % copies].raw(), wbytes, cudaMemcpyDeviceToDevice, cuda::stream());
        });
        std::printf(
            "%-10s v1 %.4f (%.0f) v3 %.4f (%.0f) v3u4 %.4f (%.0f) v3w4 %.4f (%.0f) copy %.4f ms (%.0f r+w)\n",
            m.name, t1, wbytes / t1 / 1e6, t3, wbytes / t3 / 1e6, t4, wbytes / t4 / 1e6, t5,
            wbytes / t5 / 1e6, tc, 2 * wbytes / tc / 1e6);
      }
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
    Tensor o1024b = Tensor::empty({1, 1024}, DType::BF16, Device::CUDA);
    Tensor o14336b = Tensor::empty({1, 14336}, DType::BF16, Device::CUDA);
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
    auto layer_v1 = [&](int i) {
      auto& L = layers[i % 2];
      linear_v1(o4096, x4096, L[0]);
      linear_v1(o1024, x4096, L[1]);
      linear_v1(o1024, x4096, L[2]);
      linear_v1(o4096, x4096, L[3]);
      linear_v1(o14336, x4096, L[4]);
      linear_v1(o14336, x4096, L[5]);
      linear_v1(o4096, x14336, L[6]);
    };
    auto layer_v3 = [&](int i) {
      auto& L = layers[i % 2];
      linear_v3<8, 8>(o4096, x4096, L[0]);
      linear_v3<8, 8>(o1024, x4096, L[1]);
      linear_v3<8, 8>(o1024, x4096, L[2]);
      linear_v3<8, 8>(o4096, x4096, L[3]);
      linear_v3<8, 8>(o14336, x4096, L[4]);
      linear_v3<8, 8>(o14336, x4096, L[5]);
      linear_v3<8, 8>(o4096, x14336, L[6]);
    };
    auto layer_fused = [&](int i) {  // q/k/v in one launch, gate/up in one launch
      auto& L = layers[i % 2];
      cuda::linear_forward_multi({&o4096, &o1024, &o1024b}, x4096, {&L[0], &L[1], &L[2]});
      cuda::linear_forward(o4096, x4096, L[3]);
      cuda::linear_forward_multi({&o14336, &o14336b}, x4096, {&L[4], &L[5]});
      cuda::linear_forward(o4096, x14336, L[6]);
    };
    std::printf("\n");
    for (int pass = 0; pass < 2; pass++) {
      double msf = time_ms(layer_fused, 30);
      std::printf("8B layer decode GEMVs, q/k/v and gate/up fused: %.4f ms (%.0f GB/s, %.1f%% of copy)\n",
                  msf, layer_bytes / msf / 1e6, 100.0 * layer_bytes / msf / 1e6 / copy_bw);
    }
    for (int pass = 0; pass < 2; pass++) {
      double ms3 = time_ms(layer_v3, 30);
      std::printf("8B layer decode GEMVs: v3 %.4f ms (%.0f GB/s, %.1f%% of copy)\n", ms3,
                  layer_bytes / ms3 / 1e6, 100.0 * layer_bytes / ms3 / 1e6 / copy_bw);
    }
    for (int pass = 0; pass < 2; pass++) {  // twice: the spread between passes is the noise
      double ms1 = time_ms(layer_v1, 30), ms = time_ms(layer, 30);
      std::printf(
          "8B layer decode GEMVs (%.1f MB): v1 %.4f ms (%.0f GB/s, %.1f%% of copy) | library %.4f ms (%.0f "
          "GB/s, %.1f%% of copy)\n",
          layer_bytes / 1e6, ms1, layer_bytes / ms1 / 1e6, 100.0 * layer_bytes / ms1 / 1e6 / copy_bw, ms,
          layer_bytes / ms / 1e6, 100.0 * layer_bytes / ms / 1e6 / copy_bw);
    }

    // The whole decode layer as the model runs it (B = 1, kv cache of S keys): norms, GEMVs, RoPE,
    // attention, SwiGLU, residual adds; bytes = weights + K/V read. Also replayed as a CUDA graph.
    Tensor xres = rand_bf16({1, 4096}, 11), h = rand_bf16({1, 4096}, 12), nw = rand_bf16({4096}, 13);
    Tensor q = rand_bf16({1, 4096}, 14), kk = rand_bf16({1, 1024}, 15), vv = rand_bf16({1, 1024}, 16);
    Tensor att = rand_bf16({1, 4096}, 17), g = rand_bf16({1, 14336}, 18), u = rand_bf16({1, 14336}, 19);
    Tensor a = rand_bf16({1, 14336}, 20), proj = rand_bf16({1, 4096}, 21);
    std::vector<float> invf(64);
    for (int i = 0; i < 64; i++) invf[i] = std::pow(500000.0f, -2.0f * i / 128);
    Tensor inv = Tensor::from_f32(invf, {64}).to(Device::CUDA);
    for (int S : {1024, 8192}) {
      Tensor kc = rand_bf16({1, S, 8, 128}, 30), vc = rand_bf16({1, S, 8, 128}, 31);
      Tensor pos = Tensor::from_i32({S - 1}, {1}).to(Device::CUDA);
      for (bool fused : {false, true}) {
        auto full = [&](int i) {
          auto& L = layers[i % 2];
          cuda::rmsnorm_forward(h, xres, nw, 1e-5f);
          if (fused) {
            cuda::linear_forward_multi({&q, &kk, &vv}, h, {&L[0], &L[1], &L[2]});
          } else {
            cuda::linear_forward(q, h, L[0]);
            cuda::linear_forward(kk, h, L[1]);
            cuda::linear_forward(vv, h, L[2]);
          }
          Tensor qh = q.reshape({1, 32, 128}), kh = kk.reshape({1, 8, 128});
          cuda::rope_forward(qh, pos, inv);
          cuda::rope_forward(kh, pos, inv);
          Tensor att4 = att.reshape({1, 1, 32, 128});
          cuda::attention_forward(att4, q.reshape({1, 1, 32, 128}), kc, vc, S - 1, S);
          cuda::linear_forward(proj, att, L[3]);
          cuda::add_inplace(xres, proj);
          cuda::rmsnorm_forward(h, xres, nw, 1e-5f);
          if (fused) {
            cuda::linear_forward_multi({&g, &u}, h, {&L[4], &L[5]});
          } else {
            cuda::linear_forward(g, h, L[4]);
            cuda::linear_forward(u, h, L[5]);
          }
          cuda::swiglu_forward(a, g, u);
          cuda::linear_forward(proj, a, L[6]);
          cuda::add_inplace(xres, proj);
        };
        double bytes = layer_bytes + 2.0 * S * 8 * 128 * 2;
        double ms = time_ms(full, 30);
        std::printf("8B decode layer%s, kv %d (%.1f MB): %.4f ms, %.0f GB/s = %.1f%% of copy bandwidth\n",
                    fused ? " (fused q/k/v, gate/up)" : "", S, bytes / 1e6, ms, bytes / ms / 1e6,
                    100.0 * bytes / ms / 1e6 / copy_bw);
        // Graph: 4 layers captured (alternating weights), replayed.
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        cudaStream_t st = cuda::stream();
        if (cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
          for (int i = 0; i < 4; i++) full(i);
          cudaError_t e = cudaStreamEndCapture(st, &graph);
          if (e == cudaSuccess && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess) {
            double gms = time_ms([&](int) { cudaGraphLaunch(exec, st); }, 20) / 4;
            std::printf(
                "   same as a CUDA graph (4 layers per replay): %.4f ms per layer, %.0f GB/s = %.1f%% of "
                "copy\n",
                gms, bytes / gms / 1e6, 100.0 * bytes / gms / 1e6 / copy_bw);
            cudaGraphExecDestroy(exec);
            cudaGraphDestroy(graph);
          } else {
            std::printf("   graph capture failed: %s\n", cudaGetErrorString(e));
            cudaGetLastError();
          }
        }
      }
    }
  }

  if (gemv_only) {
    cuda::synchronize();
    return 0;
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
