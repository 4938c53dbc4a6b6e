// Quantized Linear layers on CUDA against the CPU quantized forward, on fresh random inputs:
// - 4-bit (NF4/FP4, with and without double quant): the fused GEMV (N = 1, 2, 3) and the dequantize +
//   cuBLASLt path (N = 5, 300), bf16 rule: ‖cuda − ref‖ ≤ 2·‖cpu_bf16 − ref‖ + slack, ref the float64 product
//   of the bf16 x with the CPU's dequantized weight, cpu_bf16 the CPU forward computing in bf16;
// - LLM.int8 with outlier columns (N = 1, 3, 301; and edge shapes: 73 outlier columns, O % 4 != 0, rows
//   longer than 4096): the same f32 value as the CPU forward, so the bf16 outputs agree with the CPU's
//   rounded to bf16;
// - quant4 / int8_dequantize_rows_cuda equal the CPU's dense weights rounded to bf16, bit for bit;
// - GPU quantization inside quantize_linear_* writes what bitsandbytes' CUDA kernels write;
// - the residual add and RMSNorm inside the 4-bit GEMV equal add_rmsnorm then the forward bit for bit, and
//   so does the SwiGLU of gate/up inside it (swiglu_forward of the two outputs).
#include "model/cuda/quant_linear_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "../../quant/bnb_cuda_check.h"
#include "../model_test_util.h"
#include "core/allocator.h"
#include "model/linear.h"
#include "model/quant_linear.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_graph.h"
#include "ops/cuda/cuda_ops.h"
#include "quant/quant_cuda.h"

using namespace qtune;
using namespace qtune_test;

namespace {

#define REQUIRE_GPU()                                             \
  do {                                                            \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU present"; \
  } while (0)

uint64_t seed() {
  static uint64_t s = [] {
    const char* e = std::getenv("QTUNE_TEST_SEED");
    uint64_t v =
        e ? std::strtoull(e, nullptr, 10) : ((uint64_t)std::random_device{}() << 32) ^ std::random_device{}();
    std::printf("[quant linear cuda tests] QTUNE_TEST_SEED=%llu\n", (unsigned long long)v);
    return v;
  }();
  return s;
}

float bf16r(float f) {
  return bf16_to_f32(f32_to_bf16(f));
}

// n values of N(0, scale) rounded to bf16.
std::vector<float> randn_bf16(std::mt19937_64& g, int64_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v((size_t)n);
  for (float& x : v) x = bf16r(d(g));
  return v;
}

// y[n, o] = Σ_i x[n, i] w[o, i] (+ b[o]) in float64.
std::vector<double> ref_linear(const std::vector<float>& x, const std::vector<float>& w,
                               const std::vector<float>& b, int64_t N, int64_t O, int64_t I) {
  std::vector<double> y((size_t)(N * O));
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < O; o++) {
      double acc = b.empty() ? 0.0 : b[(size_t)o];
      for (int64_t i = 0; i < I; i++) acc += (double)x[(size_t)(n * I + i)] * w[(size_t)(o * I + i)];
      y[(size_t)(n * O + o)] = acc;
    }
  return y;
}

double rel(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); i++) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST(QuantLinearCuda, Forward4bitFollowsTheBf16RuleOnGemvAndGemmPaths) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed());
  const int64_t O = 320, I = 512;
  for (QuantType qt : {QuantType::NF4, QuantType::FP4})
    for (bool dq : {false, true}) {
      std::vector<float> wv = randn_bf16(g, O * I, 0.05f), bv = randn_bf16(g, O, 0.1f);
      Tensor w = Tensor::from_f32(wv, {O, I}).to_dtype(DType::BF16);  // a bf16 checkpoint
      auto cpu = quantize_linear_4bit(w, qt, 64, dq, DType::F32);
      auto cpu_bf16 = quantize_linear_4bit(w, qt, 64, dq, DType::BF16);  // the same weights, bf16 math
      auto gpu = quant4_linear_to(*cpu, Device::CUDA);
      const std::vector<float> wd = quant4_linear_dense(*cpu).to_f32_vector();  // [O, I]
      Tensor bias = Tensor::from_f32(bv, {O}), bias_gpu = bias.to_dtype(DType::BF16).to(Device::CUDA);
      for (int64_t N : {1, 2, 3, 5, 300}) {
        const std::string what =
            std::string(quant_type_name(qt)) + (dq ? " dq" : "") + " N=" + std::to_string(N);
        SCOPED_TRACE(what);
        std::vector<float> xv = randn_bf16(g, N * I);
        Tensor x = Tensor::from_f32(xv, {N, I});
        std::vector<double> ref = ref_linear(xv, wd, bv, N, O, I);
        Tensor y_cpu = Tensor::empty({N, O}, DType::F32), y_cpu16 = Tensor::empty({N, O}, DType::F32);
        quant4_linear_forward(y_cpu, x, *cpu, &bias);
        quant4_linear_forward(y_cpu16, x, *cpu_bf16, &bias);
        Tensor xg = x.to_dtype(DType::BF16).to(Device::CUDA);
        Tensor y_gpu = Tensor::empty({N, O}, DType::BF16, Device::CUDA);
        Tensor y_gpu32 = Tensor::empty({N, O}, DType::F32, Device::CUDA);
        quant4_linear_forward(y_gpu, xg, *gpu, &bias_gpu);
        quant4_linear_forward(y_gpu32, xg, *gpu, &bias_gpu);
        const double e_cpu16 = rel(y_cpu16.to_f32_vector(), ref), e_gpu = rel(y_gpu.to_f32_vector(), ref);
        const double e_gpu32 = rel(y_gpu32.to_f32_vector(), ref), e_cpu = rel(y_cpu.to_f32_vector(), ref);
        std::vector<double> cpu_d(y_cpu.numel());
        const std::vector<float> yc = y_cpu.to_f32_vector();
        for (size_t i = 0; i < cpu_d.size(); i++) cpu_d[i] = yc[i];
        std::printf(
            "[ measured ] 4-bit %s: vs f64 cuda bf16 %.3g, cuda f32 %.3g, cpu bf16 %.3g, cpu f32 %.3g; "
            "cuda vs cpu quantized forward %.3g\n",
            what.c_str(), e_gpu, e_gpu32, e_cpu16, e_cpu, rel(y_gpu.to_f32_vector(), cpu_d));
        EXPECT_LE(e_gpu, 2.0 * e_cpu16 + 1e-5);
        EXPECT_LE(e_gpu32, 2.0 * e_cpu16 + 1e-5);  // f32 out: the weights' bf16 rounding at most
      }
    }
}

namespace {

// int8_linear_forward on the GPU (bf16 and f32 out) against the CPU forward, for each N: outlier columns
// `outs` (one element each above the threshold), the f32 outputs equal, the bf16 ones equal the CPU's
// rounded. tol > 0 (the outliers as GEMMs: other summation order): the f32 outputs within tol relative
// norm error, and at most 1% of the bf16 ones a rounding step off.
void check_int8_forward(std::mt19937_64& g, int64_t O, int64_t K, float thr, const std::vector<int64_t>& Ns,
                        const std::vector<int64_t>& outs, double tol = 0.0, DType x_dtype = DType::BF16) {
  std::vector<float> wv = randn_bf16(g, O * K, 0.05f), bv = randn_bf16(g, O, 0.1f);
  auto cpu = quantize_linear_8bit(Tensor::from_f32(wv, {O, K}), thr);
  auto gpu = int8_linear_to(*cpu, Device::CUDA);
  Tensor bias = Tensor::from_f32(bv, {O}), bias_gpu = bias.to_dtype(DType::BF16).to(Device::CUDA);
  for (int64_t N : Ns) {
    SCOPED_TRACE("O=" + std::to_string(O) + " K=" + std::to_string(K) + " threshold " + std::to_string(thr) +
                 " N=" + std::to_string(N) + " outlier columns " + std::to_string(outs.size()) + " x " +
                 dtype_name(x_dtype));
    std::vector<float> xv = randn_bf16(g, N * K);
    for (int64_t c : outs) xv[(size_t)(((c * 7) % N) * K + c)] = bf16r(8.0f + (float)c / 64.0f);
    Tensor x = Tensor::from_f32(xv, {N, K});
    Tensor y_cpu = Tensor::empty({N, O}, DType::F32);
    int8_linear_forward(y_cpu, x, *cpu, &bias);
    Tensor xg = x.to_dtype(x_dtype).to(Device::CUDA);
    Tensor y_gpu = Tensor::empty({N, O}, DType::BF16, Device::CUDA);
    Tensor y_gpu32 = Tensor::empty({N, O}, DType::F32, Device::CUDA);
    int8_linear_forward(y_gpu, xg, *gpu, &bias_gpu);
    int8_linear_forward(y_gpu32, xg, *gpu, &bias_gpu);
    const std::vector<float> c = y_cpu.to_f32_vector(), b16 = y_gpu.to_f32_vector(),
                             f32 = y_gpu32.to_f32_vector();
    int diff16 = 0, diff32 = 0;
    double num = 0, den = 0;
    for (size_t i = 0; i < c.size(); i++) {
      diff16 += bf16r(c[i]) != b16[i];
      diff32 += c[i] != f32[i];
      num += (double)(c[i] - f32[i]) * (c[i] - f32[i]);
      den += (double)c[i] * c[i];
    }
    std::printf(
        "[ measured ] int8 O=%lld K=%lld thr %.0f N=%lld, %zu outlier columns: %d of %zu bf16 outputs and %d "
        "f32 outputs differ from the CPU's (f32 rel %.3g)\n",
        (long long)O, (long long)K, thr, (long long)N, outs.size(), diff16, c.size(), diff32,
        std::sqrt(num / den));
    if (tol > 0.0) {
      EXPECT_LE(std::sqrt(num / den), tol);
      EXPECT_LE(diff16, (int)(c.size() / 100));
    } else {
      EXPECT_EQ(diff32, 0);
      EXPECT_EQ(diff16, 0);
    }
  }
}

}  // namespace

TEST(QuantLinearCuda, Int8ForwardGivesTheCpuValue) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 1);
  for (float thr : {6.0f, 0.0f}) check_int8_forward(g, 192, 256, thr, {1, 3, 301}, {5, 77, 200});
}

// More outlier columns than the forward gathers (64: the rest are read in place below 64 rows, and from 64
// rows on they take the GEMM decomposition; with a case where most columns are outliers, as in a random
// model's down projection), a row
// count that is not a multiple of the epilogue's row group, an output count that cuBLASLt's int8 GEMM does
// not take (the GEMV), and rows longer than one warp holds (the block-per-row quantization).
TEST(QuantLinearCuda, Int8ForwardEdgeShapesGiveTheCpuValue) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 5);
  std::vector<int64_t> many;
  for (int64_t c = 3; c < 512; c += 7) many.push_back(c);  // 73 columns
  check_int8_forward(g, 260, 512, 6.0f, {1, 2, 37}, many);
  check_int8_forward(g, 260, 512, 6.0f, {67, 300}, many, 1e-6);
  std::vector<int64_t> most;
  for (int64_t c = 0; c < 1024; c++)
    if (c % 3 != 1) most.push_back(c);  // 683 of 1024 columns
  check_int8_forward(g, 300, 1024, 6.0f, {1, 37}, most);
  check_int8_forward(g, 300, 1024, 6.0f, {300}, most, 1e-6);
  check_int8_forward(g, 190, 256, 6.0f, {9}, {5, 77, 200});
  check_int8_forward(g, 36, 4104, 6.0f, {1, 13}, {0, 4095, 4103});  // K % 16 != 0: no one-launch row
  // One row in one launch (int8_gemv_row_cuda): rows held as 2 and 4 pieces per thread (the longest it
  // takes), outliers in a last half word of its column bitmap, more outputs than blocks, f32 x, and rows past
  // its limit (the launches before it).
  check_int8_forward(g, 300, 14336, 6.0f, {1}, {0, 17, 8191, 8192, 14335});
  check_int8_forward(g, 33, 32768, 6.0f, {1}, {1, 32767});
  check_int8_forward(g, 50, 4112, 6.0f, {1}, {7, 4100, 4111});  // K % 32 == 16: a half bitmap word
  check_int8_forward(g, 20, 32784, 6.0f, {1}, {3, 32780});
  check_int8_forward(g, 70, 512, 6.0f, {1, 3}, many, 0.0, DType::F32);
  check_int8_forward(g, 70, 512, 0.0f, {1}, {}, 0.0, DType::F32);
}

// LLM.int8 weights that share x (q/k/v with biases, gate/up) at one row of x: linear_forward_shared's one
// launch equals a forward per weight bit for bit (which equals the CPU's, above), with and without outlier
// columns; weights with other thresholds, and two rows, take a forward each.
TEST(QuantLinearCuda, Int8SharedInputOneLaunchEqualsForwardEach) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 11);
  const int64_t K = 1024;
  auto make = [&](int64_t O, bool with_bias, float thr) {
    Linear l;
    l.q8 = int8_linear_to(*quantize_linear_8bit(Tensor::from_f32(randn_bf16(g, O * K, 0.05f), {O, K}), thr),
                          Device::CUDA);
    if (with_bias)
      l.bias = Tensor::from_f32(randn_bf16(g, O, 0.1f), {O}).to_dtype(DType::BF16).to(Device::CUDA);
    return l;
  };
  const Linear q = make(300, true, 6.0f), k = make(100, true, 6.0f), v = make(100, true, 6.0f),
               gate = make(700, false, 6.0f), up = make(700, false, 6.0f), other = make(64, false, 4.0f);
  for (int64_t N : {1, 2})
    for (const std::vector<int64_t>& outs : {std::vector<int64_t>{}, std::vector<int64_t>{3, 500, 1023}})
      for (const std::vector<const Linear*>& lins :
           {std::vector<const Linear*>{&q, &k, &v}, std::vector<const Linear*>{&gate, &up},
            std::vector<const Linear*>{&up, &other}}) {
        SCOPED_TRACE("N=" + std::to_string(N) + ", " + std::to_string(outs.size()) + " outlier columns, " +
                     std::to_string(lins.size()) + " weights");
        std::vector<float> xv = randn_bf16(g, N * K);
        for (int64_t c : outs) xv[(size_t)c] = bf16r(7.0f + (float)c / 256.0f);
        Tensor x = Tensor::from_f32(xv, {N, K}).to_dtype(DType::BF16).to(Device::CUDA);
        std::vector<Tensor> shared, each;
        std::vector<Tensor*> outs_shared;
        for (const Linear* l : lins) {
          shared.push_back(Tensor::empty({N, l->out_features()}, DType::BF16, Device::CUDA));
          each.push_back(Tensor::empty({N, l->out_features()}, DType::BF16, Device::CUDA));
        }
        for (Tensor& t : shared) outs_shared.push_back(&t);
        linear_forward_shared(outs_shared, x, lins);
        for (size_t j = 0; j < lins.size(); j++) lins[j]->forward(each[j], x);
        for (size_t j = 0; j < lins.size(); j++) {
          const std::vector<float> a = shared[j].to_f32_vector(), b = each[j].to_f32_vector();
          EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "weight " << j;
        }
      }
}

// The many-row forward captured in a CUDA graph (its outlier kernel runs on a forked stream) and replayed on
// new contents of the same x with other outlier columns: each replay equals the eager forward bit for bit
// and the CPU forward's value (rounded to bf16), so the column flags were cleared after each listing (stale
// flags would send columns to the f32 path that the CPU quantizes).
TEST(QuantLinearCuda, Int8ForwardInACudaGraphEqualsEager) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 9);
  const int64_t N = 64, K = 512, O = 256;
  auto cpu = quantize_linear_8bit(Tensor::from_f32(randn_bf16(g, O * K, 0.05f), {O, K}), 6.0f);
  auto gpu = int8_linear_to(*cpu, Device::CUDA);
  Tensor xg = Tensor::empty({N, K}, DType::BF16, Device::CUDA);
  Tensor y_graph = Tensor::empty({N, O}, DType::BF16, Device::CUDA),
         y_eager = Tensor::empty({N, O}, DType::BF16, Device::CUDA),
         y_cpu = Tensor::empty({N, O}, DType::F32);
  auto set_x = [&](const std::vector<int64_t>& outs) {
    std::vector<float> xv = randn_bf16(g, N * K);
    for (int64_t c : outs) xv[(size_t)(((c * 5) % N) * K + c)] = bf16r(9.0f + (float)c / 64.0f);
    Tensor x = Tensor::from_f32(xv, {N, K}), xb = x.to_dtype(DType::BF16);
    int8_linear_forward(y_cpu, x, *cpu, nullptr);
    cuda::copy_to_device_async(xg.raw(), xb.raw(), (size_t)(N * K * 2));
    cuda::synchronize();
  };
  set_x({3, 100});
  int8_linear_forward(y_eager, xg, *gpu, nullptr);  // first call eagerly: the plan and buffers exist
  cuda::CudaGraph graph;
  ASSERT_TRUE(graph.capture([&] { int8_linear_forward(y_graph, xg, *gpu, nullptr); })) << graph.error();
  for (const std::vector<int64_t>& outs :
       {std::vector<int64_t>{3, 100}, std::vector<int64_t>{7, 200, 301, 511}, std::vector<int64_t>{},
        std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}}) {
    set_x(outs);
    graph.launch();
    int8_linear_forward(y_eager, xg, *gpu, nullptr);
    const std::vector<float> a = y_graph.to_f32_vector(), b = y_eager.to_f32_vector(),
                             c = y_cpu.to_f32_vector();
    int bad_eager = 0, bad_cpu = 0;
    for (size_t i = 0; i < a.size(); i++) {
      bad_eager += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
      bad_cpu += a[i] != bf16r(c[i]);
    }
    EXPECT_EQ(bad_eager, 0) << outs.size() << " outlier columns";
    EXPECT_EQ(bad_cpu, 0) << outs.size() << " outlier columns";
  }
}

TEST(QuantLinearCuda, DequantizedRowsEqualTheCpuWeightsInBf16) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 2);
  const int64_t O = 48, I = 160;  // 160 % 64 != 0: blocks straddle rows
  for (DType orig : {DType::F32, DType::BF16})
    for (DType cd : {DType::F32, DType::BF16, DType::F16})
      for (bool dq : {false, true}) {
        Tensor w = Tensor::from_f32(randn_bf16(g, O * I), {O, I}).to_dtype(orig);
        auto cpu = quantize_linear_4bit(w, QuantType::NF4, 64, dq, cd);
        auto gpu = quant4_linear_to(*cpu, Device::CUDA);
        EXPECT_EQ(gpu->absmax.defined(), !dq);
        const std::vector<float> dense = quant4_linear_dense(*cpu).to_f32_vector();
        for (int64_t o0 : {0, 5, 47}) {
          const int64_t rows = std::min<int64_t>(O - o0, 9);
          Tensor out = Tensor::empty({rows, I}, DType::BF16, Device::CUDA);
          quant4_dequantize_rows_cuda(out, *gpu, o0, rows);
          const std::vector<float> got = out.to_f32_vector();
          int bad = 0;
          for (int64_t i = 0; i < rows * I; i++) bad += got[(size_t)i] != bf16r(dense[(size_t)(o0 * I + i)]);
          EXPECT_EQ(bad, 0) << dtype_name(orig) << " cd " << dtype_name(cd) << (dq ? " dq" : "") << " o0 "
                            << o0;
        }
      }
  auto q8 = quantize_linear_8bit(Tensor::from_f32(randn_bf16(g, O * I), {O, I}), 6.0f);
  auto q8g = int8_linear_to(*q8, Device::CUDA);
  const std::vector<float> dense8 = int8_vectorwise_dequant(q8->w).to_f32_vector();
  Tensor out = Tensor::empty({10, I}, DType::BF16, Device::CUDA);
  int8_dequantize_rows_cuda(out, *q8g, 30, 10);
  const std::vector<float> got = out.to_f32_vector();
  int bad = 0;
  for (int64_t i = 0; i < 10 * I; i++) bad += got[(size_t)i] != bf16r(dense8[(size_t)(30 * I + i)]);
  EXPECT_EQ(bad, 0);
  EXPECT_THROW(int8_dequantize_rows_cuda(out, *q8g, 40, 10), Error);  // past the last row
}

// GPU quantization inside quantize_linear_* writes what bitsandbytes' CUDA kernels write: against the host
// model of their rules (BnbBackend::Cuda; for int8 the CPU path, whose scale differs only in the reciprocal)
// the absmax and scales are equal, and a code differs only where the GPU's approximate reciprocal moves it.
TEST(QuantLinearCuda, GpuQuantizationFollowsBitsandbytesCuda) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 3);
  Tensor w = Tensor::from_f32(randn_bf16(g, 96 * 448, 0.02f), {96, 448}).to_dtype(DType::BF16);
  qtune_test::CodeDiff d;
  for (bool dq : {false, true}) {
    const Quant4Tensor want = quantize_4bit(w, QuantType::NF4, 64, dq, BnbBackend::Cuda);
    auto gpu = quantize_linear_4bit(w.to(Device::CUDA), QuantType::NF4, 64, dq, DType::BF16);
    ASSERT_TRUE(gpu->on_cuda());
    auto back = quant4_linear_to(*gpu, Device::CPU);
    if (dq) {
      EXPECT_TRUE(qtune_test::same_bits(back->q.nested_absmax, want.nested_absmax));
      EXPECT_EQ(back->q.offset, want.offset);
    } else {
      EXPECT_TRUE(qtune_test::same_bits(back->q.absmax, want.absmax));
    }
    qtune_test::count_quant4_diffs(w, back->q, QuantType::NF4, 64, d);
  }
  const Tensor w16 = w.to_dtype(DType::F16);
  const Int8Rowwise c8 = int8_vectorwise_quant(w16, 0.0f);
  auto g8 = quantize_linear_8bit(w.to(Device::CUDA), 6.0f);
  auto b8 = int8_linear_to(*g8, Device::CPU);
  EXPECT_TRUE(qtune_test::same_bits(b8->w.scale, c8.scale));
  d.add(qtune_test::int8_code_diffs(w16, c8, b8->w.q));
  EXPECT_EQ(d.unexplained, 0);
  EXPECT_LE(d.moved * 1000, d.codes);
}

TEST(QuantLinearCuda, MixedDevicesAreErrors) {
  REQUIRE_GPU();
  auto cpu = quantize_linear_4bit(Tensor::zeros({32, 64}, DType::F32), QuantType::NF4, 64, false, DType::F32);
  Tensor xg = Tensor::zeros({1, 64}, DType::BF16, Device::CUDA),
         yg = Tensor::empty({1, 32}, DType::BF16, Device::CUDA);
  expect_error([&] { quant4_linear_forward(yg, xg, *cpu, nullptr); }, ErrorKind::Usage, {"on the CPU"});
  auto gpu = quant4_linear_to(*cpu, Device::CUDA);
  Tensor x = Tensor::zeros({1, 64}, DType::F32), y = Tensor::empty({1, 32}, DType::F32);
  expect_error([&] { quant4_linear_forward(y, x, *gpu, nullptr); }, ErrorKind::Usage, {"GPU"});
}

namespace {

// The outputs (BF16 [1, O] per weight) and biases of a launch over several weights that share x: got from
// the fused launch, want from the reference launches.
struct PartOutputs {
  std::vector<Tensor> biases, want, got;
  std::vector<const Tensor*> bptr;
  std::vector<Tensor*> want_p, got_p;
  PartOutputs(std::mt19937_64& g, const std::vector<int64_t>& Os, bool bias) {
    for (int64_t O : Os) {
      biases.push_back(
          bias ? Tensor::from_f32(randn_bf16(g, O, 0.1f), {O}).to_dtype(DType::BF16).to(Device::CUDA)
               : Tensor());
      want.push_back(Tensor::empty({1, O}, DType::BF16, Device::CUDA));
      got.push_back(Tensor::empty({1, O}, DType::BF16, Device::CUDA));
    }
    for (size_t j = 0; j < Os.size(); j++) {
      bptr.push_back(bias ? &biases[j] : nullptr);
      want_p.push_back(&want[j]);
      got_p.push_back(&got[j]);
    }
  }
};

// A fused norm's inputs: the residual x, the added y, the norm weight w (entries ~ norm_scale), a zeroed
// buffer for the new residual, and a copy of x for the reference (which adds in place).
struct NormInputs {
  Tensor x, y, w, res, xs;
  std::vector<uint8_t> x_before;
  NormInputs(std::mt19937_64& g, int64_t I, float norm_scale) {
    auto row = [&](float scale) {
      return Tensor::from_f32(randn_bf16(g, I, scale), {1, I}).to_dtype(DType::BF16).to(Device::CUDA);
    };
    x = row(2.0f);
    y = row(1.0f);
    w = row(norm_scale).reshape({I});
    res = Tensor::zeros({1, I}, DType::BF16, Device::CUDA);
    xs = Tensor::from_f32(x.to_f32_vector(), {1, I}).to_dtype(DType::BF16).to(Device::CUDA);
    x_before = bytes_of(x);
  }
  // The reference's normalized row: add_rmsnorm (add) or rmsnorm_forward on the copy of x.
  Tensor reference(bool add, float eps) {
    Tensor h = Tensor::empty({1, w.numel()}, DType::BF16, Device::CUDA);
    if (add)
      cuda::add_rmsnorm(xs, y, h, w, eps);
    else
      cuda::rmsnorm_forward(h, xs, w, eps);
    return h;
  }
};

}  // namespace

// A decoder block's first 4-bit Linears with the residual add and RMSNorm inside their GEMV launch
// (quant4_linear_forward_norm_cuda) against add_rmsnorm (or rmsnorm_forward) then the shared-input forward:
// the same bits in every output and in the written residual. Rows of 4096 (512 norm threads, one piece
// each), 2048 (256 threads) and 320 (128 threads, most idle); with and without the add; parts that share a
// launch and parts that do not (another block size).
TEST(QuantLinearCuda, NormInsideTheGemvEqualsAddRmsnormThenForward) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 13);
  struct Case {
    int64_t I;
    std::vector<int64_t> Os;
    std::vector<int64_t> bss;
    bool add, bias;
  };
  for (const Case& c :
       {Case{4096, {512, 128, 128}, {64, 64, 64}, true, false}, Case{4096, {300, 77}, {64, 64}, false, true},
        Case{2048, {96, 40}, {64, 32}, true, true}, Case{320, {64}, {64}, true, false}})
    for (bool dq : {false, true}) {
      SCOPED_TRACE("I=" + std::to_string(c.I) + " parts " + std::to_string(c.Os.size()) +
                   (c.add ? " add" : "") + (dq ? " dq" : ""));
      const int64_t I = c.I;
      std::vector<std::shared_ptr<const Quant4Linear>> qs;
      std::vector<const Quant4Linear*> ws;
      for (size_t j = 0; j < c.Os.size(); j++) {
        const int64_t O = c.Os[j];
        qs.push_back(
            quant4_linear_to(*quantize_linear_4bit(Tensor::from_f32(randn_bf16(g, O * I, 0.05f), {O, I}),
                                                   QuantType::NF4, c.bss[j], dq, DType::BF16),
                             Device::CUDA));
        ws.push_back(qs.back().get());
      }
      PartOutputs po(g, c.Os, c.bias);
      NormInputs in(g, I, 0.3f);
      const float eps = 1e-5f;
      ASSERT_TRUE(quant4_linear_forward_norm_cuda(po.got_p, in.x, c.add ? &in.y : nullptr, in.w, eps,
                                                  c.add ? &in.res : nullptr, ws, po.bptr));
      Tensor h = in.reference(c.add, eps);
      quant4_linear_forward_multi_cuda(po.want_p, h, ws, po.bptr);
      for (size_t j = 0; j < c.Os.size(); j++)
        EXPECT_EQ(bytes_of(po.got[j]), bytes_of(po.want[j])) << "part " << j;
      if (c.add) EXPECT_EQ(bytes_of(in.res), bytes_of(in.xs));
      EXPECT_EQ(bytes_of(in.x), in.x_before) << "x must not change";
    }
  // Refused (nothing queued) when the residual would be written over an input.
  auto q = quant4_linear_to(*quantize_linear_4bit(Tensor::from_f32(randn_bf16(g, 64 * 256), {64, 256}),
                                                  QuantType::NF4, 64, false, DType::BF16),
                            Device::CUDA);
  Tensor x = Tensor::zeros({1, 256}, DType::BF16, Device::CUDA),
         w = Tensor::zeros({256}, DType::BF16, Device::CUDA);
  Tensor y = Tensor::empty({1, 64}, DType::BF16, Device::CUDA);
  EXPECT_FALSE(quant4_linear_forward_norm_cuda({&y}, x, &x, w, 1e-5f, &x, {q.get()}, {nullptr}));
}

// The same for LLM.int8 weights (the int8 row GEMV): outputs and the new residual equal add_rmsnorm (or
// rmsnorm_forward) then int8_linear_forward_multi_cuda bit for bit; norm weights large enough that the
// normalized row has outlier columns, and small; rows of 8192 (two pieces per thread), 4096, 2048 and 320.
TEST(QuantLinearCuda, Int8NormInsideTheRowGemvEqualsAddRmsnormThenForward) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 17);
  struct Case {
    int64_t K;
    std::vector<int64_t> Os;
    bool add, bias;
  };
  for (const Case& c : {Case{4096, {512, 128, 128}, true, true}, Case{2048, {96, 40}, false, false},
                        Case{8192, {70}, true, false}, Case{320, {64, 64}, true, true}})
    for (float norm_scale : {0.3f, 3.0f}) {
      SCOPED_TRACE("K=" + std::to_string(c.K) + " parts " + std::to_string(c.Os.size()) +
                   (c.add ? " add" : "") + " norm scale " + std::to_string(norm_scale));
      const int64_t K = c.K;
      std::vector<std::shared_ptr<const Int8Linear>> qs;
      std::vector<const Int8Linear*> ws;
      for (int64_t O : c.Os) {
        qs.push_back(
            int8_linear_to(*quantize_linear_8bit(Tensor::from_f32(randn_bf16(g, O * K, 0.05f), {O, K}), 6.0f),
                           Device::CUDA));
        ws.push_back(qs.back().get());
      }
      PartOutputs po(g, c.Os, c.bias);
      NormInputs in(g, K, norm_scale);
      const float eps = 1e-5f;
      ASSERT_TRUE(int8_gemv_norm_ok(ws, in.w));
      ASSERT_TRUE(int8_linear_forward_norm_cuda(po.got_p, in.x, c.add ? &in.y : nullptr, in.w, eps,
                                                c.add ? &in.res : nullptr, ws, po.bptr));
      Tensor h = in.reference(c.add, eps);
      int outliers = 0;
      for (float v : h.to_f32_vector()) outliers += std::fabs(v) >= 6.0f;
      std::printf("[ measured ] int8 norm in the row GEMV, K=%lld, norm scale %.1f: %d outlier columns\n",
                  (long long)K, norm_scale, outliers);
      int8_linear_forward_multi_cuda(po.want_p, h, ws, po.bptr);
      for (size_t j = 0; j < c.Os.size(); j++)
        EXPECT_EQ(bytes_of(po.got[j]), bytes_of(po.want[j])) << "part " << j;
      if (c.add) EXPECT_EQ(bytes_of(in.res), bytes_of(in.xs));
      EXPECT_EQ(bytes_of(in.x), in.x_before) << "x must not change";
    }
  // Refused (nothing queued): the residual written over an input; a row longer than 8192; weights of
  // other thresholds.
  auto q = int8_linear_to(*quantize_linear_8bit(Tensor::from_f32(randn_bf16(g, 64 * 256), {64, 256}), 6.0f),
                          Device::CUDA);
  auto q4 = int8_linear_to(*quantize_linear_8bit(Tensor::from_f32(randn_bf16(g, 64 * 256), {64, 256}), 4.0f),
                           Device::CUDA);
  Tensor x = Tensor::zeros({1, 256}, DType::BF16, Device::CUDA),
         w = Tensor::zeros({256}, DType::BF16, Device::CUDA);
  Tensor y = Tensor::empty({1, 64}, DType::BF16, Device::CUDA);
  EXPECT_FALSE(int8_linear_forward_norm_cuda({&y}, x, &x, w, 1e-5f, &x, {q.get()}, {nullptr}));
  EXPECT_FALSE(int8_gemv_norm_ok({q.get(), q4.get()}, w));
  auto big = int8_linear_to(*quantize_linear_8bit(Tensor::from_f32(randn_bf16(g, 4 * 8208), {4, 8208}), 6.0f),
                            Device::CUDA);
  EXPECT_FALSE(int8_gemv_norm_ok({big.get()}, Tensor::zeros({8208}, DType::BF16, Device::CUDA)));
}

// The SwiGLU inside the int8 row GEMV (decode's down projection): equal to swiglu_forward then the forward
// bit for bit, with inputs large enough that silu(g) · u has outlier columns, and small; rows of 16384 (the
// longest it takes), 14336 and 320, a bias. Longer rows are refused.
TEST(QuantLinearCuda, Int8GluInsideTheRowGemvEqualsSwigluThenForward) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 19);
  for (int64_t K : {16384, 14336, 320})
    for (float scale : {0.5f, 3.0f}) {
      SCOPED_TRACE("K=" + std::to_string(K) + " scale " + std::to_string(scale));
      const int64_t O = K == 320 ? 64 : 150;
      auto w = int8_linear_to(
          *quantize_linear_8bit(Tensor::from_f32(randn_bf16(g, O * K, 0.05f), {O, K}), 6.0f), Device::CUDA);
      Tensor bias = Tensor::from_f32(randn_bf16(g, O, 0.1f), {O}).to_dtype(DType::BF16).to(Device::CUDA);
      auto row = [&]() {
        return Tensor::from_f32(randn_bf16(g, K, scale), {1, K}).to_dtype(DType::BF16).to(Device::CUDA);
      };
      Tensor gate = row(), up = row(), a = Tensor::empty({1, K}, DType::BF16, Device::CUDA);
      Tensor got = Tensor::empty({1, O}, DType::BF16, Device::CUDA),
             want = Tensor::empty({1, O}, DType::BF16, Device::CUDA);
      ASSERT_TRUE(int8_gemv_glu_ok(*w));
      ASSERT_TRUE(int8_linear_forward_glu_cuda(got, gate, up, *w, &bias));
      cuda::swiglu_forward(a, gate, up);
      int outliers = 0;
      for (float v : a.to_f32_vector()) outliers += std::fabs(v) >= 6.0f;
      std::printf("[ measured ] int8 SwiGLU in the row GEMV, K=%lld, scale %.1f: %d outlier columns\n",
                  (long long)K, scale, outliers);
      int8_linear_forward_cuda(want, a, *w, &bias);
      EXPECT_EQ(bytes_of(got), bytes_of(want));
    }
  auto big = int8_linear_to(
      *quantize_linear_8bit(Tensor::from_f32(randn_bf16(g, 4 * 16400), {4, 16400}), 6.0f), Device::CUDA);
  EXPECT_FALSE(int8_gemv_glu_ok(*big));
}

// gate and up in one launch with the SwiGLU applied to their rows: the outputs equal the launch without it
// and swiglu_forward of them bit for bit, through the fused norm (one row; decode's path) and through
// gemv_4bit_cuda_parts at two rows; partial 16-row groups, a bias, plain and nested absmax, NF4 and FP4,
// the short-x and long-x load orders. Misuses are refused.
TEST(QuantLinearCuda, GluInsideTheGemvEqualsSwigluOfItsOutputs) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 17);
  struct Case {
    int64_t I, O, bs;
    QuantType qt;
    bool dq, bias;
  };
  for (const Case& c :
       {Case{4096, 2056, 64, QuantType::NF4, true, true}, Case{1024, 4096, 64, QuantType::NF4, false, false},
        Case{4160, 300, 64, QuantType::NF4, true, false}, Case{320, 37, 128, QuantType::FP4, false, true}}) {
    SCOPED_TRACE("I=" + std::to_string(c.I) + " O=" + std::to_string(c.O) + (c.dq ? " dq" : ""));
    const int64_t I = c.I, O = c.O;
    auto quant = [&] {
      return quant4_linear_to(*quantize_linear_4bit(Tensor::from_f32(randn_bf16(g, O * I, 0.05f), {O, I}),
                                                    c.qt, c.bs, c.dq, DType::BF16),
                              Device::CUDA);
    };
    auto gate = quant(), up = quant();
    ASSERT_TRUE(quant4_gemv_glu_ok(*gate, *up));
    Tensor bias = Tensor::from_f32(randn_bf16(g, O, 0.5f), {O}).to_dtype(DType::BF16).to(Device::CUDA);
    const std::vector<const Tensor*> biases = {c.bias ? &bias : nullptr, nullptr};
    auto rows = [&](int64_t n, float scale) {
      return Tensor::from_f32(randn_bf16(g, n * I, scale), {n, I}).to_dtype(DType::BF16).to(Device::CUDA);
    };
    auto out = [&](int64_t n) { return Tensor::empty({n, O}, DType::BF16, Device::CUDA); };
    // One row through the fused norm, against add_rmsnorm, the two-weight forward and swiglu_forward.
    Tensor x = rows(1, 2.0f), y = rows(1, 1.0f), w = rows(1, 0.3f).reshape({I});
    Tensor xs = Tensor::from_f32(x.to_f32_vector(), {1, I}).to_dtype(DType::BF16).to(Device::CUDA);
    Tensor res = Tensor::zeros({1, I}, DType::BF16, Device::CUDA),
           h = Tensor::empty({1, I}, DType::BF16, Device::CUDA);
    Tensor g1 = out(1), u1 = out(1), a1 = out(1), g2 = out(1), u2 = out(1), a2 = out(1);
    ASSERT_TRUE(quant4_linear_forward_norm_cuda({&g1, &u1}, x, &y, w, 1e-5f, &res, {gate.get(), up.get()},
                                                biases, &a1));
    cuda::add_rmsnorm(xs, y, h, w, 1e-5f);
    quant4_linear_forward_multi_cuda({&g2, &u2}, h, {gate.get(), up.get()}, biases);
    cuda::swiglu_forward(a2, g2, u2);
    EXPECT_EQ(bytes_of(g1), bytes_of(g2));
    EXPECT_EQ(bytes_of(u1), bytes_of(u2));
    EXPECT_EQ(bytes_of(a1), bytes_of(a2));
    EXPECT_EQ(bytes_of(res), bytes_of(xs));
    // Two rows through gemv_4bit_cuda_parts, with and without glu_out.
    Tensor x2 = rows(2, 1.0f), gg = out(2), uu = out(2), aa = out(2), gw = out(2), uw = out(2), aw = out(2);
    auto args = [&](const Quant4Linear& q, Tensor& o, const Tensor* b) {
      Gemv4Args a;
      a.packed = q.q.packed.data<uint8_t>();
      a.absmax = absmax4_view(q.q);
      a.blocksize = q.q.blocksize;
      a.quant_type = q.q.quant_type;
      a.x = x2.raw();
      a.out = o.raw();
      a.O = O;
      a.I = I;
      a.rows = 2;
      if (b) a.bias = b->raw();
      return a;
    };
    Gemv4Args ag = args(*gate, gg, biases[0]), au = args(*up, uu, nullptr);
    ag.glu_out = au.glu_out = aa.raw();
    gemv_4bit_cuda_parts({ag, au}, cuda::stream());
    gemv_4bit_cuda_parts({args(*gate, gw, biases[0]), args(*up, uw, nullptr)}, cuda::stream());
    cuda::swiglu_forward(aw, gw, uw);
    EXPECT_EQ(bytes_of(gg), bytes_of(gw));
    EXPECT_EQ(bytes_of(uu), bytes_of(uw));
    EXPECT_EQ(bytes_of(aa), bytes_of(aw));
    // Misuses: one weight, weights of different O, F32 outputs, glu_out on one weight only.
    Gemv4Args one = ag, f32 = ag, f32u = au, only_gate = ag, plain_up = au;
    plain_up.glu_out = nullptr;
    Tensor of = Tensor::empty({2, O}, DType::F32, Device::CUDA),
           ouf = Tensor::empty({2, O}, DType::F32, Device::CUDA);
    f32.out = of.raw(), f32.out_dtype = DType::F32;
    f32u.out = ouf.raw(), f32u.out_dtype = DType::F32;
    Gemv4Args shorter = au;
    shorter.O = O - 1;
    expect_error([&] { gemv_4bit_cuda(one, cuda::stream()); }, ErrorKind::Usage, {"glu_out"});
    expect_error([&] { gemv_4bit_cuda_parts({ag, shorter}, cuda::stream()); }, ErrorKind::Usage, {"glu_out"});
    expect_error([&] { gemv_4bit_cuda_parts({f32, f32u}, cuda::stream()); }, ErrorKind::Usage, {"glu_out"});
    expect_error(
        [&] {
          gemv_4bit_cuda_parts({only_gate, plain_up}, cuda::stream());
        },
        ErrorKind::Usage, {"glu_out"});
  }
  // Block size 32 has no lane-pair layout: not taken (false, nothing queued).
  auto q32 = quant4_linear_to(*quantize_linear_4bit(Tensor::from_f32(randn_bf16(g, 64 * 256), {64, 256}),
                                                    QuantType::NF4, 32, false, DType::BF16),
                              Device::CUDA);
  EXPECT_FALSE(quant4_gemv_glu_ok(*q32, *q32));
  Tensor x = Tensor::zeros({1, 256}, DType::BF16, Device::CUDA),
         w = Tensor::zeros({256}, DType::BF16, Device::CUDA);
  Tensor y0 = Tensor::empty({1, 64}, DType::BF16, Device::CUDA),
         y1 = Tensor::empty({1, 64}, DType::BF16, Device::CUDA);
  Tensor a = Tensor::empty({1, 64}, DType::BF16, Device::CUDA);
  EXPECT_FALSE(quant4_linear_forward_norm_cuda({&y0, &y1}, x, nullptr, w, 1e-5f, nullptr,
                                               {q32.get(), q32.get()}, {nullptr, nullptr}, &a));
}
