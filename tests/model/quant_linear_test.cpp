// The quantized Linear kernels on fresh random inputs against float64 references: the fused 4-bit GEMV
// (1-4 rows) and the tiled dequantize + sgemm path (more rows), with blocks that straddle weight rows;
// the dequantized weights equal quant/'s dequantize_4bit rounded to the compute dtype; LLM.int8 forward
// against a float64 evaluation of the same decomposition (f16-rounded x, outlier columns in f32).
#include "model/quant_linear.h"

#include <cmath>
#include <random>

#include "model/linear.h"
#include "model_test_util.h"

using namespace qtune;
using namespace qtune_test;

namespace {

Tensor randn(const Shape& s, std::mt19937& g, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v((size_t)shape_numel(s));
  for (float& x : v) x = d(g);
  return Tensor::from_f32(v, s);
}

// y[n, o] = sum_i x[n, i] * w[o, i] (+ b[o]) in float64.
std::vector<float> ref_linear(const std::vector<float>& x, const std::vector<float>& w,
                              const std::vector<float>& b, int64_t N, int64_t O, int64_t I) {
  std::vector<float> y((size_t)(N * O));
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < O; o++) {
      double acc = b.empty() ? 0.0 : b[(size_t)o];
      for (int64_t i = 0; i < I; i++) acc += (double)x[(size_t)(n * I + i)] * w[(size_t)(o * I + i)];
      y[(size_t)o + (size_t)(n * O)] = (float)acc;
    }
  return y;
}

float round_as(DType dt, float f) {
  return dt == DType::BF16 ? bf16_to_f32(f32_to_bf16(f)) : dt == DType::F16 ? f16_to_f32(f32_to_f16(f)) : f;
}

}  // namespace

TEST(QuantLinear, DequantizedWeightEqualsDequantize4bitRounded) {
  std::mt19937 g(1);
  for (QuantType qt : {QuantType::NF4, QuantType::FP4})
    for (DType orig : {DType::F32, DType::BF16})
      for (DType cd : {DType::F32, DType::BF16, DType::F16}) {
        Tensor w = randn({48, 160}, g).to_dtype(orig);  // 160 % 64 != 0: blocks straddle rows
        auto l = quantize_linear_4bit(w, qt, 64, true, cd);
        std::vector<float> got = quant4_linear_dense(*l).to_f32_vector();
        std::vector<float> want = dequantize_4bit(l->q, DType::F32).to_f32_vector();
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < got.size(); i++) ASSERT_EQ(got[i], round_as(cd, round_as(orig, want[i]))) << i;
      }
}

TEST(QuantLinear, Forward4bitMatchesFloat64OnBothPaths) {
  std::mt19937 g(2);
  for (int64_t I : {96, 75})  // odd I: blocks and rows start mid-byte (the generic paths)
    for (int64_t N : {1, 2, 4, 5, 37})
      for (int64_t bs : {32, 64, 256}) {
        const int64_t O = 70;
        Tensor w = randn({O, I}, g), x = randn({N, I}, g), b = randn({O}, g);
        auto l = quantize_linear_4bit(w, QuantType::NF4, bs, bs == 64, DType::F32);
        Linear lin;
        lin.q4 = l;
        lin.bias = b;
        Tensor y = Tensor::empty({N, O}, DType::F32);
        lin.forward(y, x);
        std::vector<float> want = ref_linear(x.to_f32_vector(), quant4_linear_dense(*l).to_f32_vector(),
                                             b.to_f32_vector(), N, O, I);
        EXPECT_LT(rel_err(y.to_f32_vector(), want), 1e-6) << "N " << N << " I " << I << " blocksize " << bs;
        EXPECT_EQ(lin.out_features(), O);
        EXPECT_EQ(lin.in_features(), I);
      }
}

TEST(QuantLinear, Int8ForwardMatchesFloat64Decomposition) {
  std::mt19937 g(3);
  for (float thr : {0.0f, 2.5f, 6.0f})
    for (int64_t N : {1, 9}) {
      const int64_t O = 33, K = 80;
      Tensor w = randn({O, K}, g), x = randn({N, K}, g), b = randn({O}, g);
      auto l = quantize_linear_8bit(w, thr);
      Tensor y = Tensor::empty({N, O}, DType::F32);
      int8_linear_forward(y, x, *l, &b);
      // Reference: f16-rounded x, outlier columns (any |x| >= thr) exact in f64 against the dequantized
      // weight, the rest quantized row-wise to int8.
      std::vector<float> xv = x.to_f32_vector(), wd = int8_vectorwise_dequant(l->w).to_f32_vector();
      std::vector<float> xh(xv.size());
      for (size_t i = 0; i < xv.size(); i++) xh[i] = round_as(DType::F16, xv[i]);
      std::vector<bool> out_col((size_t)K, false);
      for (size_t i = 0; i < xh.size(); i++)
        if (thr > 0 && std::fabs(xh[i]) >= thr) out_col[i % K] = true;
      std::vector<float> want((size_t)(N * O));
      const int8_t* qw = l->w.q.data<int8_t>();
      const float* sw = l->w.scale.data<float>();
      for (int64_t n = 0; n < N; n++) {
        double a = 0;
        for (int64_t k = 0; k < K; k++) {  // the row scale skips outlier elements only (as bitsandbytes)
          const double v = std::fabs(xh[(size_t)(n * K + k)]);
          if (!(thr > 0 && v >= thr)) a = std::max(a, v);
        }
        for (int64_t o = 0; o < O; o++) {
          double acc = 0, outl = 0;
          for (int64_t k = 0; k < K; k++) {
            if (out_col[(size_t)k]) {
              outl += (double)xv[(size_t)(n * K + k)] * wd[(size_t)(o * K + k)];
            } else {
              const double q = std::nearbyint(xh[(size_t)(n * K + k)] * (127.0 / a));
              acc += q * qw[o * K + k];
            }
          }
          // bitsandbytes rescales by the constant 6.200124e-05 (1/127² is 6.2000124e-05).
          want[(size_t)(n * O + o)] = (float)(acc * a * sw[o] * 6.200124e-05 + outl + b.data<float>()[o]);
        }
      }
      EXPECT_LT(rel_err(y.to_f32_vector(), want), 1e-5) << "threshold " << thr << " N " << N;
      if (thr == 2.5f && N == 9) {
        int n_out = 0;
        for (bool c : out_col) n_out += c;
        EXPECT_GT(n_out, 0);  // the outlier path ran
      }
    }
}

TEST(QuantLinear, RejectsMismatchedShapes) {
  std::mt19937 g(4);
  auto l = quantize_linear_4bit(randn({8, 64}, g), QuantType::NF4, 64, false, DType::F32);
  Tensor x = randn({2, 32}, g), y = Tensor::empty({2, 8}, DType::F32);
  expect_error([&] { quant4_linear_forward(y, x, *l, nullptr); }, ErrorKind::Shape,
               {"quant4_linear_forward", "[N, 64]"});
  expect_error(
      [&] {
        quantize_linear_4bit(randn({8, 64}, g), QuantType::NF4, 48, false, DType::F32);
      },
      ErrorKind::Usage, {"48"});
}
