// qtune side of bench/quant_kernels.sh: copy bandwidth (the ceiling), NF4 dequantize to bf16, the fused
// 4-bit GEMV at batch 1 (standalone and inside a CUDA graph), and the LLM.int8
// Linear forward against fp16 / bf16 cuBLASLt, on Llama-3-8B shapes. One JSON line per measurement
// (impl "qtune"), CUDA-event medians; weights rotate over enough copies that the L2 never holds them.
// Bytes: dequantize = packed + absmax (+ nested) read + bf16 written; GEMV = packed + absmax + x + out.
// The GEMV lines are followed by a bare read of as many bytes, the ceiling of a kernel that only reads them.
// LLM.int8: the forward standalone and per call in a CUDA graph of 4, threshold 6 and 0, and its parts
// (GEMM, row quantization, outlier listing and gathering, epilogue) standalone; and at one row (decode),
// timed as the GEMV. `quant_kernels int8` runs only the LLM.int8 Linear lines, `quant_kernels gemv` only the
// GEMV lines, `quant_kernels int8row` only the one-row LLM.int8 lines, `quant_kernels layer` only a decode
// layer's Linears (4-bit and LLM.int8, fused as DecodeStep runs them and separate).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/error.h"
#include "model/cuda/quant_linear_cuda.h"
#include "model/quant_linear.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "quant/quant_cuda.h"

using namespace qtune;

namespace {

// Spins one thread for about `cycles` SM clocks: keeps the GPU busy while the host submits what follows.
__global__ void spin_kernel(long long cycles) {
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
}

// Median of `reps` CUDA-event timings of fn. With spin > 0 each timed call is submitted while the GPU still
// runs a spin of that many clocks (600000: ~300 µs), so the time is the call's GPU time alone; otherwise the
// GPU is idle when the start event is recorded and the time includes the host's submission of the launch (a
// few µs).
constexpr long long kQueuedSpin = 600000;
double median_ms(const std::function<void(int)>& fn, int reps = 30, int warm = 5, long long spin = 0) {
  cudaStream_t s = cuda::stream();
  for (int i = 0; i < warm; i++) fn(i);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<double> t;
  for (int i = 0; i < reps; i++) {
    if (spin > 0) spin_kernel<<<1, 1, 0, s>>>(spin);
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
  return t[t.size() / 2];
}

// Per-call time of `count` calls submitted back to back on the stream (no graph) behind a spin long enough
// (~100 µs per call) that all of them are queued before the first starts; median of 10 runs.
double stream_ms(const std::function<void(int)>& fn, int count) {
  auto all = [&](int) {
    for (int i = 0; i < count; i++) fn(i);
  };
  return median_ms(all, 10, 1, 200000LL * (count + 1)) / count;
}

// Per-call time of `count` calls captured into one CUDA graph on the ops stream and replayed.
double graph_ms(const std::function<void(int)>& fn, int count) {
  cudaStream_t s = cuda::stream();
  cudaGraph_t g;
  cudaGraphExec_t ge;
  QT_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < count; i++) fn(i);
  QT_CUDA_CHECK(cudaStreamEndCapture(s, &g));
  QT_CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
  double ms = median_ms([&](int) { QT_CUDA_CHECK(cudaGraphLaunch(ge, s)); }, 10, 2);
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  return ms / count;
}

Tensor randn_gpu(const Shape& shape, DType dt, float scale, std::mt19937& g) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v((size_t)shape_numel(shape));
  for (float& x : v) x = d(g);
  return Tensor::from_f32(v, shape).to_dtype(dt).to(Device::CUDA);
}

int copies_for(double bytes) {
  return std::max(2, (int)std::ceil(256.0 * (1 << 20) / bytes));
}

double copy_bandwidth() {
  const size_t n = size_t(1) << 30;
  void* a = device_malloc(n);
  void* b = device_malloc(n);
  double ms = median_ms(
      [&](int) { QT_CUDA_CHECK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, cuda::stream())); });
  device_free(a);
  device_free(b);
  return 2.0 * n / ms / 1e6;
}

// One JSON line: fn idle, queued, in a CUDA graph of k calls and back to back on the stream, each with its
// fraction of the copy bandwidth for `bytes` moved per call.
void emit_timings(const char* bench, int64_t O, int64_t I, bool dq, double bytes, double copy_gbs,
                  const std::function<void(int)>& f, int k) {
  const double ms = median_ms(f), qms = median_ms(f, 30, 5, kQueuedSpin), gms = graph_ms(f, k),
               sms = stream_ms(f, k);
  auto frac = [&](double t) { return bytes / t / 1e6 / copy_gbs; };
  std::printf(
      "{\"impl\": \"qtune\", \"bench\": \"%s\", \"O\": %lld, \"I\": %lld, \"dq\": %s, \"us\": %.2f, "
      "\"us_queued\": %.2f, \"us_graph\": %.2f, \"us_stream\": %.2f, \"gbs\": %.1f, \"frac_copy\": %.3f, "
      "\"frac_copy_queued\": %.3f, \"frac_copy_graph\": %.3f, \"frac_copy_stream\": %.3f}\n",
      bench, (long long)O, (long long)I, dq ? "true" : "false", ms * 1e3, qms * 1e3, gms * 1e3, sms * 1e3,
      bytes / ms / 1e6, frac(ms), frac(qms), frac(gms), frac(sms));
}

void bench_dequant(double copy_gbs, std::mt19937& g) {
  for (auto shape : std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {14336, 4096}})
    for (bool dq : {false, true}) {
      const int64_t O = shape.first, I = shape.second, n = O * I, nb = n / 64;
      const double bytes = n / 2.0 + (dq ? nb + nb / 256 * 4.0 : nb * 4.0) + 2.0 * n;
      const int k = copies_for(bytes);
      std::vector<Quant4Tensor> qs;
      std::vector<Tensor> outs;
      Tensor w = randn_gpu({O, I}, DType::BF16, 0.02f, g);  // quantized into k separate copies
      for (int c = 0; c < k; c++) {
        qs.push_back(quantize_4bit_cuda(w, QuantType::NF4, 64, dq));
        outs.push_back(Tensor::empty({O, I}, DType::BF16, Device::CUDA));
      }
      auto f = [&](int i) {
        const Quant4Tensor& q = qs[i % k];
        dequantize_4bit_cuda_raw(q.packed.data<uint8_t>(), absmax4_view(q), 0, n, 64, QuantType::NF4,
                                 DType::BF16, outs[i % k].raw(), cuda::stream());
      };
      emit_timings("dequant_nf4_bf16", O, I, dq, bytes, copy_gbs, f, k);
    }
}

// A bare read of n 16-byte pieces (grid-stride, 64 warps per SM, streaming loads, nothing written): what a
// kernel that only reads the GEMV's bytes reaches in each of the four timings.
__global__ void read_only_kernel(const uint4* p, size_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;  // keeps the loads; practically never true
}

void bench_read_ceiling(double copy_gbs, int64_t O, int64_t I, double bytes) {
  const int k = copies_for(bytes);
  const size_t pieces = (size_t)(bytes / 16), stride = (pieces * 16 + 255) / 256 * 256;
  char* buf = static_cast<char*>(device_malloc(stride * k));
  QT_CUDA_CHECK(cudaMemset(buf, 1, stride * k));
  uint32_t* sink = static_cast<uint32_t*>(device_malloc(4));
  int sms = 0;
  QT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  auto f = [&](int i) {
    read_only_kernel<<<sms * 4, 512, 0, cuda::stream()>>>(
        reinterpret_cast<const uint4*>(buf + stride * (i % k)), pieces, sink);
  };
  emit_timings("read_gemv_bytes", O, I, false, pieces * 16.0, copy_gbs, f, k);
  device_free(sink);
  device_free(buf);
}

void bench_gemv(double copy_gbs, std::mt19937& g) {
  for (auto shape : std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {14336, 4096}, {4096, 14336}})
    for (bool dq : {false, true}) {
      const int64_t O = shape.first, I = shape.second, n = O * I, nb = n / 64;
      const double bytes = n / 2.0 + (dq ? nb + nb / 256 * 4.0 : nb * 4.0) + 2.0 * I + 2.0 * O;
      const int k = copies_for(bytes);
      std::vector<Quant4Tensor> qs;
      Tensor w = randn_gpu({O, I}, DType::BF16, 0.02f, g);  // quantized into k separate copies
      for (int c = 0; c < k; c++) qs.push_back(quantize_4bit_cuda(w, QuantType::NF4, 64, dq));
      Tensor x = randn_gpu({1, I}, DType::BF16, 1.0f, g);
      Tensor y = Tensor::empty({1, O}, DType::BF16, Device::CUDA);
      {
        auto f = [&](int i) {
          const Quant4Tensor& q = qs[i % k];
          Gemv4Args a;
          a.packed = q.packed.data<uint8_t>();
          a.absmax = absmax4_view(q);
          a.x = x.raw();
          a.out = y.raw();
          a.O = O;
          a.I = I;
          a.weights_static = true;  // as quant4_linear_forward_cuda sets it
          gemv_4bit_cuda(a, cuda::stream());
        };
        emit_timings("gemv_nf4", O, I, dq, bytes, copy_gbs, f, k);
      }
      if (!dq) bench_read_ceiling(copy_gbs, O, I, bytes);
    }
}

// LLM.int8 at one row of x (decode: int8_gemv_row_cuda), threshold 6 with three outlier columns, on the
// 8B's attention, MLP up and down shapes. Bytes = int8 weight + its row scales + x + out.
void bench_int8_row(double copy_gbs, std::mt19937& g) {
  for (auto [O, K] : std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {14336, 4096}, {4096, 14336}}) {
    const double bytes = (double)O * K + 4.0 * O + 2.0 * K + 2.0 * O;
    const int k = copies_for(bytes);
    Tensor w = randn_gpu({O, K}, DType::BF16, 0.02f, g);
    std::vector<std::shared_ptr<const Int8Linear>> qs;
    for (int c = 0; c < k; c++) qs.push_back(quantize_linear_8bit(w, 6.0f));
    std::vector<float> xv((size_t)K);
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (float& v : xv) v = d(g);
    for (int64_t c : {11, 1000, 3000}) xv[(size_t)c] = 8.0f;  // outlier columns
    Tensor x = Tensor::from_f32(xv, {1, K}).to_dtype(DType::BF16).to(Device::CUDA);
    Tensor y = Tensor::empty({1, O}, DType::BF16, Device::CUDA);
    emit_timings(
        "int8_row", O, K, false, bytes, copy_gbs,
        [&](int i) { int8_linear_forward(y, x, *qs[i % k], nullptr); }, k);
  }
}

// One decoder layer's Linears at one token on the 8B shape (q/k/v, o, gate/up, down), 4-bit (NF4 + double
// quant) and LLM.int8 (threshold 6; the norm weight makes three outlier columns), per layer in a CUDA graph
// and back to back on a stream: as DecodeStep launches them (the residual add + RMSNorm inside q/k/v and
// gate/up, the SwiGLU inside gate/up in 4-bit and inside down in 8-bit) and as separate launches
// (add_rmsnorm, the shared-input GEMVs, swiglu_forward), then each fused launch alone. Layers rotate over
// enough copies that the L2 never holds their weights. Bytes = the layer's weight storage (packed or int8,
// absmax or scales); the activations (a few KB) are left out.
void bench_layer(double copy_gbs, std::mt19937& g) {
  const int64_t H = 4096, KV = 1024, F = 14336;
  const float eps = 1e-5f;
  struct Shape {
    const char* name;
    int64_t O, I;
  };
  const std::vector<Shape> shapes = {{"q", H, H},    {"k", KV, H}, {"v", KV, H},  {"o", H, H},
                                     {"gate", F, H}, {"up", F, H}, {"down", H, F}};
  std::vector<Tensor> dense;
  for (const Shape& sh : shapes) dense.push_back(randn_gpu({sh.O, sh.I}, DType::BF16, 0.02f, g));
  auto act = [&](int64_t n, float scale) { return randn_gpu({1, n}, DType::BF16, scale, g); };
  Tensor x = act(H, 1.0f), x_add = act(H, 1.0f), res_out = act(H, 1.0f), h = act(H, 1.0f), att = act(H, 1.0f),
         proj = act(H, 1.0f), q = act(H, 1.0f), k = act(KV, 1.0f), v = act(KV, 1.0f), gt = act(F, 1.0f),
         up = act(F, 1.0f), a = act(F, 1.0f);
  std::vector<float> nw((size_t)H, 1.0f);
  for (int64_t c : {11, 1000, 3000}) nw[(size_t)c] = 8.0f;  // outlier columns of the normed input (8-bit)
  Tensor norm_w = Tensor::from_f32(nw, {H}).to_dtype(DType::BF16).to(Device::CUDA);
  const std::vector<const Tensor*> nb3(3, nullptr), nb2(2, nullptr);
  // The attention between q/k/v and o, as DecodeStep runs it (RoPE and the cache write folded in): the token
  // at position 575 of a 576-row cache (a 512-token prompt and 64 new tokens), 8 caches rotating (19 MB).
  const int64_t Hq = 32, Hkv = 8, D = 128, S = 576;
  const int n_caches = 8;
  std::vector<Tensor> kc, vc;
  for (int c = 0; c < n_caches; c++) {
    kc.push_back(randn_gpu({1, S, Hkv, D}, DType::BF16, 1.0f, g));
    vc.push_back(randn_gpu({1, S, Hkv, D}, DType::BF16, 1.0f, g));
  }
  std::vector<float> freq((size_t)D / 2);
  for (int64_t i = 0; i < D / 2; i++) freq[(size_t)i] = (float)std::pow(500000.0, -2.0 * i / D);
  Tensor inv_freq = Tensor::from_f32(freq, {D / 2}).to(Device::CUDA);
  Tensor pos = Tensor::from_i32({(int32_t)(S - 1)}, {1}).to(Device::CUDA);
  Tensor q4 = q.reshape({1, 1, Hq, D}), att4 = att.reshape({1, 1, Hq, D});
  Tensor ws = Tensor::empty({std::max<int64_t>(cuda::attention_at_workspace_floats(q4, kc[0]), 1)},
                            DType::F32, Device::CUDA);
  auto attention = [&](int i) {
    cuda::attention_rope_forward_at(att4, q4, &k, &v, kc[i % n_caches], vc[i % n_caches], pos, &inv_freq, ws);
  };
  auto emit = [&](const char* quant, const char* what, double bytes, const std::function<void(int)>& f,
                  int k) {
    const double gms = graph_ms(f, k), sms = stream_ms(f, k);
    std::printf(
        "{\"impl\": \"qtune\", \"bench\": \"decode_layer\", \"quant\": \"%s\", \"what\": \"%s\", \"mb\": "
        "%.1f, "
        "\"us_graph\": %.2f, \"us_stream\": %.2f, \"frac_copy_graph\": %.3f, \"frac_copy_stream\": %.3f}\n",
        quant, what, bytes / 1e6, gms * 1e3, sms * 1e3, bytes / gms / 1e6 / copy_gbs,
        bytes / sms / 1e6 / copy_gbs);
  };
  // The storage bytes of the Linears ids (indices into shapes) for one kind's bytes per weight.
  auto bytes_of = [&](const std::function<double(const Shape&)>& per, std::initializer_list<int> ids) {
    double b = 0;
    for (int j : ids) b += per(shapes[(size_t)j]);
    return b;
  };
  const std::initializer_list<int> all = {0, 1, 2, 3, 4, 5, 6};
  {  // 4-bit: packed codes, the 8-bit absmax codes and the nested f32 absmax
    auto per = [](const Shape& sh) { return sh.O * sh.I * (0.5 + 1.0 / 64) + 4.0 * sh.O * sh.I / 16384; };
    auto part_bytes = [&](std::initializer_list<int> ids) { return bytes_of(per, ids); };
    const double layer_bytes = part_bytes(all);
    const int copies = copies_for((double)H * H / 2);  // o's bytes, the fewest: no part stays in the L2
    std::vector<std::vector<std::shared_ptr<const Quant4Linear>>> L(copies);
    for (auto& l : L)
      for (const Tensor& w : dense)
        l.push_back(quantize_linear_4bit(w, QuantType::NF4, 64, true, DType::BF16));
    auto qkv_norm = [&](int i) {
      const auto& l = L[i % copies];
      if (!quant4_linear_forward_norm_cuda({&q, &k, &v}, x, &x_add, norm_w, eps, &res_out,
                                           {l[0].get(), l[1].get(), l[2].get()}, nb3))
        throw_error(ErrorKind::Internal, "bench_layer: the 4-bit norm GEMV refused q/k/v");
    };
    auto o_proj = [&](int i) { quant4_linear_forward(proj, att, *L[i % copies][3], nullptr); };
    auto gateup_norm_glu = [&](int i) {
      const auto& l = L[i % copies];
      if (!quant4_linear_forward_norm_cuda({&gt, &up}, x, &x_add, norm_w, eps, &res_out,
                                           {l[4].get(), l[5].get()}, nb2, &a))
        throw_error(ErrorKind::Internal, "bench_layer: the 4-bit norm GEMV refused gate/up");
    };
    auto down = [&](int i) { quant4_linear_forward(proj, a, *L[i % copies][6], nullptr); };
    auto fused = [&](int i) { qkv_norm(i), o_proj(i), gateup_norm_glu(i), down(i); };
    auto separate = [&](int i) {
      const auto& l = L[i % copies];
      cuda::add_rmsnorm(x, x_add, h, norm_w, eps);
      quant4_linear_forward_multi_cuda({&q, &k, &v}, h, {l[0].get(), l[1].get(), l[2].get()}, nb3);
      o_proj(i);
      cuda::add_rmsnorm(x, x_add, h, norm_w, eps);
      quant4_linear_forward_multi_cuda({&gt, &up}, h, {l[4].get(), l[5].get()}, nb2);
      cuda::swiglu_forward(a, gt, up);
      down(i);
    };
    emit("nf4_dq", "layer_fused", layer_bytes, fused, copies);
    emit(
        "nf4_dq", "layer_fused_with_attention", layer_bytes,
        [&](int i) { qkv_norm(i), attention(i), o_proj(i), gateup_norm_glu(i), down(i); }, copies);
    emit("nf4_dq", "attention", 2.0 * S * Hkv * D * 2, attention, copies);
    emit("nf4_dq", "layer_separate", layer_bytes, separate, copies);
    emit("nf4_dq", "qkv_norm", part_bytes({0, 1, 2}), qkv_norm, copies);
    emit("nf4_dq", "o", part_bytes({3}), o_proj, copies);
    emit("nf4_dq", "gateup_norm_glu", part_bytes({4, 5}), gateup_norm_glu, copies);
    emit("nf4_dq", "down", part_bytes({6}), down, copies);
    emit(
        "nf4_dq", "qkv_plain", part_bytes({0, 1, 2}),
        [&](int i) {
          const auto& l = L[i % copies];
          quant4_linear_forward_multi_cuda({&q, &k, &v}, h, {l[0].get(), l[1].get(), l[2].get()}, nb3);
        },
        copies);
    emit(
        "nf4_dq", "gateup_plain", part_bytes({4, 5}),
        [&](int i) {
          const auto& l = L[i % copies];
          quant4_linear_forward_multi_cuda({&gt, &up}, h, {l[4].get(), l[5].get()}, nb2);
        },
        copies);
  }
  {  // LLM.int8
    // int8 codes and the f32 row scales
    auto per = [](const Shape& sh) { return (double)sh.O * sh.I + 4.0 * sh.O; };
    auto part_bytes = [&](std::initializer_list<int> ids) { return bytes_of(per, ids); };
    const double layer_bytes = part_bytes(all);
    const int copies = copies_for((double)H * H);  // o's bytes, the fewest: no part stays in the L2
    std::vector<std::vector<std::shared_ptr<const Int8Linear>>> L(copies);
    for (auto& l : L)
      for (const Tensor& w : dense) l.push_back(quantize_linear_8bit(w, 6.0f));
    auto qkv_norm = [&](int i) {
      const auto& l = L[i % copies];
      if (!int8_linear_forward_norm_cuda({&q, &k, &v}, x, &x_add, norm_w, eps, &res_out,
                                         {l[0].get(), l[1].get(), l[2].get()}, nb3))
        throw_error(ErrorKind::Internal, "bench_layer: the int8 row GEMV refused q/k/v");
    };
    auto o_proj = [&](int i) { int8_linear_forward(proj, att, *L[i % copies][3], nullptr); };
    auto gateup_norm = [&](int i) {
      const auto& l = L[i % copies];
      if (!int8_linear_forward_norm_cuda({&gt, &up}, x, &x_add, norm_w, eps, &res_out,
                                         {l[4].get(), l[5].get()}, nb2))
        throw_error(ErrorKind::Internal, "bench_layer: the int8 row GEMV refused gate/up");
    };
    auto down_glu = [&](int i) {
      if (!int8_linear_forward_glu_cuda(proj, gt, up, *L[i % copies][6], nullptr))
        throw_error(ErrorKind::Internal, "bench_layer: the int8 row GEMV refused the SwiGLU");
    };
    auto fused = [&](int i) { qkv_norm(i), o_proj(i), gateup_norm(i), down_glu(i); };
    auto separate = [&](int i) {
      const auto& l = L[i % copies];
      cuda::add_rmsnorm(x, x_add, h, norm_w, eps);
      int8_linear_forward_multi_cuda({&q, &k, &v}, h, {l[0].get(), l[1].get(), l[2].get()}, nb3);
      o_proj(i);
      cuda::add_rmsnorm(x, x_add, h, norm_w, eps);
      int8_linear_forward_multi_cuda({&gt, &up}, h, {l[4].get(), l[5].get()}, nb2);
      cuda::swiglu_forward(a, gt, up);
      int8_linear_forward(proj, a, *l[6], nullptr);
    };
    emit("int8", "layer_fused", layer_bytes, fused, copies);
    emit("int8", "layer_separate", layer_bytes, separate, copies);
    emit("int8", "qkv_norm", part_bytes({0, 1, 2}), qkv_norm, copies);
    emit("int8", "o", part_bytes({3}), o_proj, copies);
    emit("int8", "gateup_norm", part_bytes({4, 5}), gateup_norm, copies);
    emit("int8", "down_glu", part_bytes({6}), down_glu, copies);
    emit(
        "int8", "qkv_plain", part_bytes({0, 1, 2}),
        [&](int i) {
          const auto& l = L[i % copies];
          int8_linear_forward_multi_cuda({&q, &k, &v}, h, {l[0].get(), l[1].get(), l[2].get()}, nb3);
        },
        copies);
    emit(
        "int8", "gateup_plain", part_bytes({4, 5}),
        [&](int i) {
          const auto& l = L[i % copies];
          int8_linear_forward_multi_cuda({&gt, &up}, h, {l[4].get(), l[5].get()}, nb2);
        },
        copies);
    emit(
        "int8", "down_plain", part_bytes({6}),
        [&](int i) { int8_linear_forward(proj, a, *L[i % copies][6], nullptr); }, copies);
  }
}

void bench_int8(std::mt19937& g) {
  const int64_t N = 2048;
  // Llama-3-8B's MLP up/gate (O = 14336) and attention (O = 4096) shapes, then its down projection (K =
  // 14336).
  for (auto [K, O] : std::vector<std::pair<int64_t, int64_t>>{{4096, 14336}, {4096, 4096}, {14336, 4096}}) {
    const double flops = 2.0 * N * K * O;
    Tensor w = randn_gpu({O, K}, DType::BF16, 0.02f, g);
    auto q8 = quantize_linear_8bit(w, 6.0f);
    std::vector<float> xv((size_t)(N * K));
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (float& v : xv) v = d(g);
    for (int64_t m = 0; m < N; m++)
      for (int64_t c : {11, 1000, 3000}) xv[(size_t)(m * K + c)] *= 8.0f;  // outlier columns
    Tensor x = Tensor::from_f32(xv, {N, K}).to_dtype(DType::BF16).to(Device::CUDA);
    Tensor y = Tensor::empty({N, O}, DType::BF16, Device::CUDA);
    auto fwd = [&](int) { int8_linear_forward(y, x, *q8, nullptr); };
    const double ms8 = median_ms(fwd), ms8g = graph_ms(fwd, 4);
    auto thr0 = std::make_shared<Int8Linear>(*q8);
    thr0->threshold = 0.0f;
    auto fwd0 = [&](int) { int8_linear_forward(y, x, *thr0, nullptr); };
    const double ms8n = median_ms(fwd0), ms8ng = graph_ms(fwd0, 4);
    Tensor w16 = w.to(Device::CPU).to_dtype(DType::F16).to(Device::CUDA);
    Tensor x16 = x.to(Device::CPU).to_dtype(DType::F16).to(Device::CUDA);
    Tensor y16 = Tensor::empty({N, O}, DType::F16, Device::CUDA);
    auto f16 = [&](int) { cuda::linear_forward(y16, x16, w16); };
    const double ms16 = median_ms(f16), ms16g = graph_ms(f16, 4);
    const double msbf = median_ms([&](int) { cuda::linear_forward(y, x, w); });
    // Parts: the row quantization of x, and the epilogue without / with the three outlier columns.
    cudaStream_t s = cuda::stream();
    Tensor qa = Tensor::empty({N, K}, DType::I8, Device::CUDA),
           sa = Tensor::empty({N}, DType::F32, Device::CUDA);
    Tensor flags = Tensor::zeros({K}, DType::U8, Device::CUDA),
           acc = Tensor::zeros({N, O}, DType::I32, Device::CUDA);
    const double ms_quant = median_ms([&](int) {
      int8_quant_rows_cuda(x.raw(), DType::BF16, N, K, 6.0f, true, qa.data<int8_t>(), sa.data<float>(),
                           flags.data<uint8_t>(), s, BnbBackend::Cpu);
    });
    const double ms_quant0 = median_ms([&](int) {
      int8_quant_rows_cuda(x.raw(), DType::BF16, N, K, 0.0f, true, qa.data<int8_t>(), sa.data<float>(),
                           nullptr, s, BnbBackend::Cpu);
    });
    const double ms_gemm = median_ms([&](int) {
      int8_gemm_cuda(acc.data<int32_t>(), qa.data<int8_t>(), q8->w.q.data<int8_t>(), N, K, O);
    });
    // The outlier columns (flags from the quantization above: the three scaled columns) and what the
    // epilogue needs at them; the epilogue without (count null) and with them.
    Tensor cols = Tensor::empty({K}, DType::I32, Device::CUDA),
           count = Tensor::empty({1}, DType::I32, Device::CUDA);
    Tensor wout = Tensor::zeros({64, O}, DType::F32, Device::CUDA),
           qout = Tensor::zeros({O, 8}, DType::I8, Device::CUDA);
    Tensor qa_c = Tensor::zeros({N, 8}, DType::I8, Device::CUDA),
           x_c = Tensor::zeros({N, 8}, DType::F32, Device::CUDA);
    Int8Epilogue e;
    e.sa = sa.data<float>();
    e.qa = qa.data<int8_t>();
    e.sb = q8->w.scale.data<float>();
    e.qb = q8->w.q.data<int8_t>();
    e.x = x.raw();
    e.out = y.raw();
    e.N = N;
    e.K = K;
    e.O = O;
    const double ms_outl = median_ms([&](int) {
      int8_outliers_cuda(flags.data<uint8_t>(), e, cols.data<int32_t>(), count.data<int32_t>(),
                         wout.data<float>(), qout.data<int8_t>(), 64, qa_c.data<int8_t>(), x_c.data<float>(),
                         nullptr, 0, s);
    });
    const double ms_epi = median_ms([&](int) { int8_epilogue_cuda(acc.data<int32_t>(), e, s); });
    e.cols = cols.data<int32_t>();
    e.count = count.data<int32_t>();
    e.wout = wout.data<float>();
    e.qout = qout.data<int8_t>();
    e.cap = 64;
    e.qa_c = qa_c.data<int8_t>();
    e.x_c = x_c.data<float>();
    const double ms_epi3 = median_ms([&](int) { int8_epilogue_cuda(acc.data<int32_t>(), e, s); });
    const int n_cols = count.to(Device::CPU).data<int32_t>()[0];
    std::printf(
        "{\"impl\": \"qtune\", \"bench\": \"int8_linear\", \"N\": %lld, \"K\": %lld, \"O\": %lld, \"us\": "
        "%.1f, "
        "\"tflops\": %.0f, \"us_no_outliers\": %.1f, \"fp16_us\": %.1f, \"fp16_tflops\": %.0f, \"bf16_us\": "
        "%.1f, "
        "\"ratio_vs_fp16\": %.2f, \"quant_rows_us\": %.1f, \"epilogue_us\": %.1f, "
        "\"epilogue_3_outliers_us\": %.1f, \"us_graph\": %.1f, \"us_no_outliers_graph\": %.1f, "
        "\"fp16_us_graph\": %.1f, \"ratio_vs_fp16_graph\": %.2f, \"quant_rows_thr0_us\": %.1f, "
        "\"int8_gemm_us\": %.1f, \"outliers_us\": %.1f, \"outlier_columns\": %d}\n",
        (long long)N, (long long)K, (long long)O, ms8 * 1e3, flops / ms8 / 1e9, ms8n * 1e3, ms16 * 1e3,
        flops / ms16 / 1e9, msbf * 1e3, ms16 / ms8, ms_quant * 1e3, ms_epi * 1e3, ms_epi3 * 1e3, ms8g * 1e3,
        ms8ng * 1e3, ms16g * 1e3, ms16g / ms8g, ms_quant0 * 1e3, ms_gemm * 1e3, ms_outl * 1e3, n_cols);
    // The 4-bit many-token path on the same shape: dequantize into the bf16 buffer + cuBLASLt.
    auto q4 = quantize_linear_4bit(w, QuantType::NF4, 64, true, DType::BF16);
    const double ms4 = median_ms([&](int) { quant4_linear_forward(y, x, *q4, nullptr); });
    std::printf(
        "{\"impl\": \"qtune\", \"bench\": \"nf4_linear_prefill\", \"N\": %lld, \"K\": %lld, \"O\": %lld, "
        "\"us\": %.1f, "
        "\"tflops\": %.0f, \"bf16_us\": %.1f}\n",
        (long long)N, (long long)K, (long long)O, ms4 * 1e3, flops / ms4 / 1e9, msbf * 1e3);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::mt19937 g(1234);
  if (argc > 1 && std::string(argv[1]) == "int8") {  // only the LLM.int8 Linear
    bench_int8(g);
    return 0;
  }
  const double copy_gbs = copy_bandwidth();
  std::printf("{\"impl\": \"qtune\", \"bench\": \"copy\", \"gbs\": %.1f}\n", copy_gbs);
  if (argc > 1 && std::string(argv[1]) == "gemv") {  // only the 4-bit GEMV
    bench_gemv(copy_gbs, g);
    return 0;
  }
  if (argc > 1 && std::string(argv[1]) == "int8row") {  // only LLM.int8 at one row
    bench_int8_row(copy_gbs, g);
    return 0;
  }
  if (argc > 1 && std::string(argv[1]) == "layer") {  // only the decode layer's Linears
    bench_layer(copy_gbs, g);
    return 0;
  }
  bench_dequant(copy_gbs, g);
  bench_gemv(copy_gbs, g);
  bench_int8_row(copy_gbs, g);
  bench_int8(g);
  return 0;
}
