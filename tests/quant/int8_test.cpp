// LLM.int8: row-wise quantization and outlier columns bit-exact against bitsandbytes (int8_*.safetensors);
// the mixed int8 / f32 matmul against a float64 reference with bitsandbytes' own test tolerances
// (tests/test_autograd.py test_matmullt: isclose(atol=0.01, rtol=0.1) may fail on <= 2.1% of the outputs,
// isclose(atol=0.035, rtol=0.2) on <= 0.1%).
#include "quant/int8.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>

#include "bnb_cuda_check.h"
#include "core/error.h"
#include "fixture.h"

using namespace qtune;
using qtune_test::Fixture;
using qtune_test::load_fixture;
using qtune_test::same_bits;

namespace {

// Fraction of y not within atol + rtol * |ref| (torch.isclose).
double not_close_fraction(const std::vector<double>& y, const std::vector<double>& ref, double atol,
                          double rtol) {
  int64_t bad = 0;
  for (size_t i = 0; i < y.size(); i++)
    if (!(std::fabs(y[i] - ref[i]) <= atol + rtol * std::fabs(ref[i]))) bad++;
  return (double)bad / (double)y.size();
}

std::vector<double> as_f64(const Tensor& t) {
  std::vector<float> v = t.to_f32_vector();
  return std::vector<double>(v.begin(), v.end());
}

// ref[m, n] = sum_k x[m, k] * w[n, k] + b[n], in float64
std::vector<double> linear_f64(const std::vector<double>& x, const std::vector<double>& w,
                               const std::vector<double>& b, int64_t M, int64_t K, int64_t N) {
  std::vector<double> y((size_t)(M * N));
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      double s = b.empty() ? 0.0 : b[(size_t)n];
      for (int64_t k = 0; k < K; k++) s += x[(size_t)(m * K + k)] * w[(size_t)(n * K + k)];
      y[(size_t)(m * N + n)] = s;
    }
  return y;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Int8, GoldensAreBitExact) {
  const int count = qtune_test::for_each_fixture("int8", [&](const Fixture& fx) {
    const float threshold = std::stof(fx.meta.at("threshold"));
    Int8Rowwise a = int8_vectorwise_quant(fx.at("a"), threshold);
    EXPECT_TRUE(same_bits(a.q, fx.at("ca")));
    EXPECT_TRUE(same_bits(a.scale, fx.at("sca")));
    const Tensor& cols = fx.at("outlier_cols");
    std::vector<int64_t> want(cols.data<int64_t>(), cols.data<int64_t>() + cols.numel());
    EXPECT_EQ(a.outlier_cols, want);
    if (threshold > 0) EXPECT_FALSE(want.empty());
    Int8Rowwise w = int8_vectorwise_quant(fx.at("w"));
    EXPECT_TRUE(same_bits(w.q, fx.at("cb")));
    EXPECT_TRUE(same_bits(w.scale, fx.at("scb")));
    // Our f32 output vs bitsandbytes' (which rounds to the input dtype twice): close, not bit-exact.
    Tensor y = int8_linear(fx.at("a"), w, threshold, fx.at("bias"));
    std::vector<double> yb = as_f64(fx.at("out")), ym = as_f64(y);
    EXPECT_LE(not_close_fraction(ym, yb, 0.01, 0.01), 0.0) << "vs bitsandbytes output";
  });
  EXPECT_GE(count, 3);
}

// bitsandbytes' test_matmullt setup: x ~ N(0, 1) with 1/8 of the columns set to 6 (outliers at threshold 6),
// w Xavier-uniform, a bias; fresh random inputs against float64.
// bitsandbytes' CUDA kernel (goldens cuda_int8_*, made on a GPU by tools/make_quant_cuda_fixtures.py) scales
// a row by 127 times the GPU's approximate reciprocal of its absmax (`__fdividef` under fast math), where the
// CPU path takes (1 / absmax) · 127. Same absmax, same outlier columns (zeroed in every row); a code differs
// only by one, where a reciprocal one ulp away moves the product across a half. The CUDA kernels match these
// files exactly (quant_cuda_test).
TEST(Int8, CudaGoldensDifferFromTheCpuOnlyByTheReciprocal) {
  qtune_test::CodeDiff d;
  const int files = qtune_test::for_each_fixture("cuda_int8", [&](const Fixture& fx) {
    const float threshold = std::stof(fx.meta.at("threshold"));
    const Tensor& x = fx.at("input");
    Int8Rowwise r = int8_vectorwise_quant(x, threshold);
    EXPECT_TRUE(same_bits(r.scale, fx.at("scale"))) << "scale";
    const std::vector<int64_t> cols(fx.at("outlier_cols").data<int64_t>(),
                                    fx.at("outlier_cols").data<int64_t>() + fx.at("outlier_cols").numel());
    EXPECT_EQ(r.outlier_cols, cols);
    d.add(qtune_test::int8_code_diffs(x, r, fx.at("q")));
  });
  std::printf(
      "[ measured ] bitsandbytes CUDA int8 goldens: %d files, %lld codes, %lld differ from the CPU path\n",
      files, (long long)d.codes, (long long)d.moved);
  EXPECT_GE(files, 5);
  EXPECT_EQ(d.unexplained, 0);
  EXPECT_GE(d.moved, 1);  // the goldens hold cases where the two paths part
  EXPECT_LE(d.moved * 10000, d.codes);
}

TEST(Int8, LinearMatchesFloat64WithBitsandbytesTolerance) {
  std::mt19937 rng(21);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto [M, K, N, dt] : {std::tuple<int64_t, int64_t, int64_t, DType>{32, 96, 64, DType::F16},
                             {17, 80, 48, DType::BF16},
                             {1, 64, 40, DType::F32},
                             {40, 256, 96, DType::F32}}) {
    std::vector<float> x((size_t)(M * K)), w((size_t)(N * K)), b((size_t)N);
    for (auto& v : x) v = nd(rng);
    for (int64_t c = 0; c < K / 8; c++) {
      const int64_t col = (int64_t)(rng() % K);
      for (int64_t m = 0; m < M; m++) x[(size_t)(m * K + col)] = 6.0f;
    }
    const float lim = std::sqrt(6.0f / (float)(K + N));
    std::uniform_real_distribution<float> ud(-lim, lim);
    for (auto& v : w) v = ud(rng);
    for (auto& v : b) v = nd(rng);
    Tensor xt = Tensor::from_f32(x, {M, K}).to_dtype(dt), wt = Tensor::from_f32(w, {N, K}).to_dtype(dt);
    Tensor bt = Tensor::from_f32(b, {N}).to_dtype(dt);
    Int8Rowwise wq = int8_vectorwise_quant(wt);
    Tensor y = int8_linear(xt, wq, 6.0f, bt);
    ASSERT_EQ(y.shape(), (Shape{M, N}));
    const std::vector<double> ref = linear_f64(as_f64(xt), as_f64(wt), as_f64(bt), M, K, N);
    const std::vector<double> got = as_f64(y);
    EXPECT_LE(not_close_fraction(got, ref, 0.01, 0.1), dt == DType::F16 ? 0.0175 : 0.021);
    EXPECT_LE(not_close_fraction(got, ref, 0.035, 0.2), 0.001);
    // And the decomposition matters: without it the outlier columns are crushed into int8 with the rest.
    Tensor y0 = int8_linear(xt, wq, 0.0f, bt);
    double e_mixed = 0, e_plain = 0, norm = 0;
    std::vector<double> g0 = as_f64(y0);
    for (size_t i = 0; i < ref.size(); i++) {
      e_mixed += (got[i] - ref[i]) * (got[i] - ref[i]);
      e_plain += (g0[i] - ref[i]) * (g0[i] - ref[i]);
      norm += ref[i] * ref[i];
    }
    EXPECT_LT(std::sqrt(e_mixed / norm), 0.02);
    EXPECT_LE(e_mixed, e_plain);
  }
}

TEST(Int8, RowwiseQuantBasics) {
  // Row 0: absmax 2 -> 127 * x / 2, round half to even; row 1 all zero -> zeros; threshold marks column 2.
  Tensor x = Tensor::from_f32({2.0f, -1.0f, 0.5f, 1.0f / 127.0f, 0.0f, 0.0f, 0.0f, 0.0f}, {2, 4});
  Int8Rowwise q = int8_vectorwise_quant(x);
  const int8_t* p = q.q.data<int8_t>();
  EXPECT_EQ(p[0], 127);
  EXPECT_EQ(p[1], -64);  // -63.5 -> -64 (half to even)
  EXPECT_EQ(p[2], 32);   // 31.75
  EXPECT_EQ(p[3], 0);    // 0.5 -> 0 (half to even)
  EXPECT_EQ(q.scale.data<float>()[1], 0.0f);
  for (int i = 4; i < 8; i++) EXPECT_EQ(p[i], 0);
  Tensor y = Tensor::from_f32({1.0f, 7.0f, -0.5f, 0.25f, 2.0f, 0.1f}, {2, 3});
  Int8Rowwise o = int8_vectorwise_quant(y, 6.0f);
  EXPECT_EQ(o.outlier_cols, std::vector<int64_t>{1});
  EXPECT_EQ(o.q.data<int8_t>()[1], 0);
  EXPECT_EQ(o.q.data<int8_t>()[4], 0);        // the whole column, not only the outlier element
  EXPECT_EQ(o.scale.data<float>()[0], 1.0f);  // the outlier does not set the row scale
  Tensor d = int8_vectorwise_dequant(q);
  EXPECT_NEAR(d.data<float>()[0], 2.0f, 1e-6f);
}

TEST(Int8, Errors) {
  Tensor x = Tensor::from_f32(std::vector<float>(12, 1.0f), {3, 4});
  Int8Rowwise w = int8_vectorwise_quant(Tensor::from_f32(std::vector<float>(10, 1.0f), {2, 5}));
  EXPECT_NE(error_of([&] { int8_linear(x, w, 0.0f); }).find("has 4 features but the weight"),
            std::string::npos);
  Int8Rowwise w4 = int8_vectorwise_quant(Tensor::from_f32(std::vector<float>(8, 1.0f), {2, 4}));
  EXPECT_NE(error_of([&] {
              int8_linear(x, w4, 0.0f, Tensor::from_f32({1, 2, 3}, {3}));
            }).find("does not match 2 outputs"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              int8_vectorwise_quant(Tensor::from_i32({1, 2}, {1, 2}));
            }).find("is not supported"),
            std::string::npos);
}
