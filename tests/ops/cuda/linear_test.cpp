// CUDA linear_forward (GEMV for N <= 4, cuBLASLt otherwise) against a float64 reference on fresh random
// bf16 inputs, up to Llama-3-8B layer shapes; f32 out must be within 1e-5, bf16 out within the bf16 rule.
#include <gtest/gtest.h>

#include "cuda_test_util.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/matmul.h"

namespace qtune {
namespace {
using namespace cuda_test;

enum class Path { Auto, CublasLt };

struct LinearCase {
  int64_t N, I, O;
  DType out_dt = DType::BF16;
  bool bias = false;
  DType bias_dt = DType::BF16;
  Path path = Path::Auto;
};

std::string name_of(const LinearCase& c) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "linear N=%lld I=%lld O=%lld out=%s%s%s%s", (long long)c.N, (long long)c.I,
                (long long)c.O, dtype_name(c.out_dt), c.bias ? " bias=" : "",
                c.bias ? dtype_name(c.bias_dt) : "", c.path == Path::CublasLt ? " [cuBLASLt]" : "");
  return buf;
}

// Returns the kernel's output (as f32) and fills ref with the float64 result.
std::vector<float> run_case(const LinearCase& c, Rng& rng, std::vector<double>* ref_out,
                            std::vector<float>* x_out = nullptr, std::vector<float>* w_out = nullptr,
                            std::vector<float>* b_out = nullptr) {
  auto x = randn_bf16(rng, c.N * c.I);
  auto w = randn_bf16(rng, c.O * c.I, 1.0f / std::sqrt((float)c.I));
  auto b = randn_bf16(rng, c.O, 0.5f);
  Tensor xd = to_device(x, {c.N, c.I}, DType::BF16);
  Tensor wd = to_device(w, {c.O, c.I}, DType::BF16);
  Tensor bd = to_device(b, {c.O}, c.bias_dt);
  Tensor out = poisoned({c.N, c.O}, c.out_dt);
  if (c.path == Path::CublasLt)
    cuda::linear_forward_cublaslt(out, xd, wd, c.bias ? &bd : nullptr);
  else
    cuda::linear_forward(out, xd, wd, c.bias ? &bd : nullptr);
  std::vector<double> ref(c.N * c.O);
  for (int64_t n = 0; n < c.N; n++)
    for (int64_t o = 0; o < c.O; o++) {
      double s = c.bias ? (double)b[o] : 0.0;
      const float* xr = &x[n * c.I];
      const float* wr = &w[o * c.I];
      for (int64_t i = 0; i < c.I; i++) s += (double)xr[i] * wr[i];
      ref[n * c.O + o] = s;
    }
  *ref_out = ref;
  if (x_out) *x_out = x;
  if (w_out) *w_out = w;
  if (b_out) *b_out = b;
  return out.to_f32_vector();
}

void check_case(const LinearCase& c) {
  Rng rng;
  std::vector<double> ref;
  auto got = run_case(c, rng, &ref);
  ASSERT_EQ(count_nonfinite(got), 0u) << name_of(c) << ": unwritten (NaN-poisoned) or non-finite outputs";
  double err = rel_err(got, ref);
  if (c.out_dt == DType::F32) {
    expect_f32_close(name_of(c), err, 1e-5);
  } else {
    std::vector<double> bf(ref.size());
    for (size_t i = 0; i < ref.size(); i++) bf[i] = round_bf16d(ref[i]);  // f32 accumulate, bf16 store
    expect_bf16_rule(name_of(c), err, rel_err(bf, ref));
  }
}

TEST(CudaLinear, DecodeGemv8BShapes) {
  QT_REQUIRE_GPU();
  check_case({1, 4096, 4096});   // q_proj / o_proj
  check_case({1, 4096, 1024});   // k_proj / v_proj
  check_case({1, 4096, 14336});  // gate / up
  check_case({1, 14336, 4096});  // down
  check_case({1, 4096, 4096, DType::F32});
}

TEST(CudaLinear, GemvSeveralRowsAndBias) {
  QT_REQUIRE_GPU();
  check_case({2, 4096, 1024});
  check_case({3, 1024, 777});
  check_case({4, 2048, 1000, DType::F32});
  check_case({1, 4096, 1024, DType::BF16, true, DType::BF16});
  check_case({4, 512, 300, DType::F32, true, DType::F32});
  check_case({2, 512, 300, DType::BF16, true, DType::F32});
}

TEST(CudaLinear, CublasLtPrefillShapes) {
  QT_REQUIRE_GPU();
  check_case({64, 4096, 4096});
  check_case({17, 4096, 14336});
  check_case({33, 14336, 4096, DType::F32});
  check_case({128, 4096, 1024, DType::BF16, true, DType::BF16});  // bias in the epilogue
  check_case({40, 1024, 512, DType::F32, true, DType::BF16});     // bias through the separate kernel
  check_case({1, 4096, 1024, DType::BF16, false, DType::BF16, Path::CublasLt});
}

TEST(CudaLinear, OddSizesFallBackToCublasLt) {
  QT_REQUIRE_GPU();
  check_case({1, 100, 33});  // I % 8 != 0: no 16-byte loads, cuBLASLt instead
  check_case({5, 100, 33, DType::F32});
  check_case({7, 8, 3});
}

TEST(CudaLinear, F32Operands) {
  QT_REQUIRE_GPU();
  Rng rng;
  const int64_t N = 33, I = 256, O = 320;
  auto x = randn_bf16(rng, N * I);
  auto w = randn_bf16(rng, O * I);
  std::vector<float> xf(x), wf(w);
  for (auto& v : xf) v += 1e-3f * rng.normal();  // not bf16-representable
  for (auto& v : wf) v += 1e-3f * rng.normal();
  Tensor out = poisoned({N, O}, DType::F32);
  Tensor xd = to_device(xf, {N, I}, DType::F32), wd = to_device(wf, {O, I}, DType::F32);
  cuda::linear_forward(out, xd, wd);
  std::vector<double> ref(N * O);
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < O; o++) {
      double s = 0;
      for (int64_t i = 0; i < I; i++) s += (double)xf[n * I + i] * wf[o * I + i];
      ref[n * O + o] = s;
    }
  auto got = out.to_f32_vector();
  ASSERT_EQ(count_nonfinite(got), 0u);
  expect_f32_close("linear f32 x f32 -> f32 (cuBLASLt, no TF32)", rel_err(got, ref), 1e-5);
}

TEST(CudaLinear, MatchesCpuOp) {
  QT_REQUIRE_GPU();
  Rng rng;
  for (int64_t N : {1, 24}) {
    LinearCase c{N, 1024, 768, DType::F32, true, DType::F32};
    std::vector<double> ref;
    std::vector<float> x, w, b;
    auto got = run_case(c, rng, &ref, &x, &w, &b);
    Tensor cpu_out = Tensor::empty({N, c.O}, DType::F32);
    Tensor xb = Tensor::from_f32(b, {c.O});
    linear_forward(cpu_out, Tensor::from_f32(x, {N, c.I}), Tensor::from_f32(w, {c.O, c.I}), &xb);
    auto cpu = cpu_out.to_f32_vector();
    double cpu_err = rel_err(cpu, ref), gpu_err = rel_err(got, ref), diff = rel_err(got, cpu);
    std::printf("  linear vs CPU op N=%lld: cpu err %.3e, gpu err %.3e, gpu-vs-cpu %.3e\n", (long long)N,
                cpu_err, gpu_err, diff);
    EXPECT_LE(diff, 1e-5);
  }
}

// Several weights sharing one input (q/k/v, gate/up): one GEMV launch at decode, per-weight otherwise.
void multi_case(int64_t N, int64_t I, const std::vector<int64_t>& Os, DType out_dt, bool bias) {
  Rng rng;
  auto x = randn_bf16(rng, N * I);
  Tensor xd = to_device(x, {N, I}, DType::BF16);
  std::vector<std::vector<float>> w(Os.size()), b(Os.size());
  std::vector<Tensor> wd, bd, outs;
  for (size_t j = 0; j < Os.size(); j++) {
    w[j] = randn_bf16(rng, Os[j] * I, 1.0f / std::sqrt((float)I));
    b[j] = randn_bf16(rng, Os[j], 0.5f);
    wd.push_back(to_device(w[j], {Os[j], I}, DType::BF16));
    bd.push_back(to_device(b[j], {Os[j]}, DType::BF16));
    outs.push_back(poisoned({N, Os[j]}, out_dt));
  }
  std::vector<Tensor*> op;
  std::vector<const Tensor*> wp, bp;
  for (size_t j = 0; j < Os.size(); j++) {
    op.push_back(&outs[j]);
    wp.push_back(&wd[j]);
    bp.push_back(bias ? &bd[j] : nullptr);
  }
  cuda::linear_forward_multi(op, xd, wp, bp);
  for (size_t j = 0; j < Os.size(); j++) {
    std::vector<double> ref(N * Os[j]), bf(N * Os[j]);
    for (int64_t n = 0; n < N; n++)
      for (int64_t o = 0; o < Os[j]; o++) {
        double acc = bias ? (double)b[j][o] : 0.0;
        for (int64_t i = 0; i < I; i++) acc += (double)x[n * I + i] * w[j][o * I + i];
        ref[n * Os[j] + o] = acc;
        bf[n * Os[j] + o] = round_bf16d(acc);
      }
    auto got = outs[j].to_f32_vector();
    ASSERT_EQ(count_nonfinite(got), 0u) << "part " << j << " has unwritten outputs";
    char what[120];
    std::snprintf(what, sizeof what, "linear_multi N=%lld I=%lld part %zu O=%lld %s%s", (long long)N,
                  (long long)I, j, (long long)Os[j], dtype_name(out_dt), bias ? " bias" : "");
    if (out_dt == DType::F32)
      expect_f32_close(what, rel_err(got, ref), 1e-5);
    else
      expect_bf16_rule(what, rel_err(got, ref), rel_err(bf, ref));
  }
}

TEST(CudaLinear, MultiWeightsShareInput) {
  QT_REQUIRE_GPU();
  multi_case(1, 4096, {4096, 1024, 1024}, DType::BF16, false);  // q/k/v of an 8B layer, one launch
  multi_case(1, 4096, {14336, 14336}, DType::BF16, false);      // gate/up
  multi_case(2, 896, {896, 128, 128}, DType::BF16, true);       // Qwen2-style biases
  multi_case(1, 512, {100, 37}, DType::F32, false);
  multi_case(5, 512, {300, 64, 64}, DType::F32, true);  // N > 2: one cuBLASLt call per weight
  Tensor x = Tensor::zeros({1, 64}, DType::BF16, Device::CUDA);
  Tensor w = Tensor::zeros({8, 64}, DType::BF16, Device::CUDA),
         out = Tensor::empty({1, 8}, DType::BF16, Device::CUDA);
  expect_error(
      [&] {
        cuda::linear_forward_multi({&out, &out}, x, {&w});
      },
      ErrorKind::Shape, {"linear_forward_multi", "2 outputs, 1 weights"});
}

TEST(CudaLinear, BadArgumentsThrow) {
  QT_REQUIRE_GPU();
  Tensor x = Tensor::zeros({2, 64}, DType::BF16, Device::CUDA);
  Tensor w = Tensor::zeros({32, 48}, DType::BF16, Device::CUDA);
  Tensor out = Tensor::empty({2, 32}, DType::BF16, Device::CUDA);
  expect_error([&] { cuda::linear_forward(out, x, w); }, ErrorKind::Shape, {"linear_forward", "BF16[2, 64]"});
  Tensor wf = Tensor::zeros({32, 64}, DType::F32, Device::CUDA);
  expect_error([&] { cuda::linear_forward(out, x, wf); }, ErrorKind::Unsupported, {"must both be BF16"});
  Tensor xc = Tensor::zeros({2, 64}, DType::BF16);
  Tensor w2 = Tensor::zeros({32, 64}, DType::BF16, Device::CUDA);
  expect_error([&] { cuda::linear_forward(out, xc, w2); }, ErrorKind::Shape, {"must be on cuda"});
}

}  // namespace
}  // namespace qtune
