// peft/dora_ops on the CPU against float64 references on fresh random inputs: the row norms of W + s·B·A,
// the scales m / norm (+ offset), the output combine (with and without a bias) and the magnitude gradient's
// finish; the dense weight of an NF4 base equals the one its forward multiplies with; shape errors.
#include "peft/dora_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "../ops/op_test_util.h"
#include "core/error.h"
#include "model/quant_linear.h"

using namespace qtune;
using qtune_test::randn;
using qtune_test::rel_err;
using qtune_test::to_f64;

namespace {

// norm[o] = ‖W[o] + s·(B·A)[o]‖ in float64.
std::vector<double> norm_f64(const Tensor& w, const Tensor& a, const Tensor& b, double s) {
  const int64_t O = w.size(0), I = w.size(1), r = a.size(0);
  std::vector<double> W = to_f64(w), A = to_f64(a), B = to_f64(b), out(O);
  for (int64_t o = 0; o < O; ++o) {
    double sq = 0;
    for (int64_t i = 0; i < I; ++i) {
      double v = W[o * I + i];
      for (int64_t k = 0; k < r; ++k) v += s * B[o * r + k] * A[k * I + i];
      sq += v * v;
    }
    out[o] = std::sqrt(sq);
  }
  return out;
}

}  // namespace

TEST(DoraOps, NormScaleCombineAndMagnitudeGradMatchFloat64) {
  const int64_t O = 37, I = 53, r = 5, N = 9;
  const float s = 1.7f;
  Tensor w = randn({O, I}, 0.3f), a = randn({r, I}, 0.2f), b = randn({O, r}, 0.2f);
  Tensor norm = Tensor::empty({O}, DType::F32);
  dora_weight_norm(norm, w, a, b, s);
  const std::vector<double> nref = norm_f64(w, a, b, s);
  EXPECT_LT(rel_err(norm, nref), 1e-6);

  Tensor m = randn({O}, 0.5f, 2.0f), d = Tensor::empty({O}, DType::F32), d1 = Tensor::empty({O}, DType::F32);
  dora_scale(d, m, norm);
  dora_scale(d1, m, norm, -1.0f);
  std::vector<double> dref(O), d1ref(O);
  for (int64_t o = 0; o < O; ++o) {
    dref[o] = m.data<float>()[o] / (double)norm.data<float>()[o];
    d1ref[o] = dref[o] - 1.0;
  }
  EXPECT_LT(rel_err(d, dref), 1e-6);
  EXPECT_LT(rel_err(d1, d1ref), 1e-6);

  for (bool with_bias : {false, true}) {
    Tensor out = randn({N, O}), t = randn({N, O}), u = randn({N, O}), bias = randn({O});
    std::vector<double> want = to_f64(out);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < O; ++o) {
        const double bo = with_bias ? bias.data<float>()[o] : 0.0;
        want[n * O + o] += (dref[o] - 1) * (t.data<float>()[n * O + o] - bo) + dref[o] * u.data<float>()[n * O + o];
      }
    dora_combine(out, t, u, d, with_bias ? &bias : nullptr);
    EXPECT_LT(rel_err(out, want), 1e-6) << with_bias;
    // t = out itself (the no-dropout forward): out = b + d ⊙ (out − b + u).
    Tensor y = randn({N, O});
    std::vector<double> want2 = to_f64(y);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < O; ++o) {
        const double bo = with_bias ? bias.data<float>()[o] : 0.0;
        double& v = want2[n * O + o];
        v = bo + dref[o] * (v - bo + u.data<float>()[n * O + o]);
      }
    dora_combine(y, y, u, d, with_bias ? &bias : nullptr);
    EXPECT_LT(rel_err(y, want2), 1e-6) << with_bias;

    Tensor gm = randn({O}), cy = randn({O}), cdy = randn({O}), p = randn({O, r});
    std::vector<double> gref = to_f64(gm);
    for (int64_t o = 0; o < O; ++o) {
      double acc = cy.data<float>()[o] - (with_bias ? (double)bias.data<float>()[o] * cdy.data<float>()[o] : 0.0);
      for (int64_t k = 0; k < r; ++k) acc += s * (double)b.data<float>()[o * r + k] * p.data<float>()[o * r + k];
      gref[o] += acc / norm.data<float>()[o];
    }
    dora_magnitude_grad(gm, cy, with_bias ? &cdy : nullptr, with_bias ? &bias : nullptr, p, b, s, norm);
    EXPECT_LT(rel_err(gm, gref), 1e-6) << with_bias;
  }
}

TEST(DoraOps, DenseWeightOfAQuantizedBaseIsWhatItsForwardUses) {
  Linear lin;
  lin.name = "model.layers.0.mlp.up_proj";
  lin.q4 = quantize_linear_4bit(randn({24, 128}, 0.05f), QuantType::NF4, 64, true, DType::F32);
  Tensor w = dora_dense_weight(lin), ref = quant4_linear_dense(*lin.q4);
  ASSERT_EQ(w.shape(), ref.shape());
  EXPECT_EQ(w.to_f32_vector(), ref.to_f32_vector());
  // Its product with x equals the quantized forward's.
  Tensor x = randn({3, 128}), y = Tensor::empty({3, 24}, DType::F32), yq = Tensor::empty({3, 24}, DType::F32);
  lin.forward_base(yq, x);
  Linear dense;
  dense.weight = w;
  dense.forward_base(y, x);
  EXPECT_LT(rel_err(y, to_f64(yq)), 1e-6);
}

TEST(DoraOps, ShapeMismatchesAreClearErrors) {
  Tensor w = randn({8, 16}), a = randn({2, 16}), b = randn({8, 3}), norm = Tensor::empty({8}, DType::F32);
  try {
    dora_weight_norm(norm, w, a, b, 1.0f);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Shape);
    EXPECT_NE(std::string(e.what()).find("dora_weight_norm"), std::string::npos) << e.what();
  }
  Tensor d = Tensor::empty({7}, DType::F32);
  EXPECT_THROW(dora_scale(d, randn({8}), norm), Error);
}
