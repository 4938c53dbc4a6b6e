// Chunked cross-entropy against a float64 reference: the summed loss and count, d(hidden) and d(lm_head)
// against central finite differences (with grad_scale), the same results for every chunk size, ignored
// labels (−100) contributing nothing, and label errors naming the row.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backward_test_util.h"
#include "ops/loss.h"

using namespace qtune;
using namespace qtune_test;

namespace {

double ce_ref(const Vec& h, const Vec& w, const std::vector<int32_t>& y, int64_t C, int64_t V) {
  double total = 0;
  for (size_t n = 0; n < y.size(); n++) {
    if (y[n] == -100) continue;
    std::vector<double> z(V);
    double mx = -1e300;
    for (int64_t v = 0; v < V; v++) {
      z[v] = 0;
      for (int64_t c = 0; c < C; c++) z[v] += h[n * C + c] * w[v * C + c];
      mx = std::max(mx, z[v]);
    }
    double s = 0;
    for (double a : z) s += std::exp(a - mx);
    total += mx + std::log(s) - z[y[n]];
  }
  return total;
}

}  // namespace

TEST(CrossEntropy, LossAndGradientsVsFiniteDifferences) {
  int64_t N = 7, C = 6, V = 11;
  std::vector<int32_t> y = {3, -100, 10, 0, 3, -100, 7};
  Tensor h = randn({N, C}), w = randn({V, C}, 0.7f), labels = Tensor::from_i32(y, {N});
  Vec hv = to_f64(h), wv = to_f64(w);
  double want = ce_ref(hv, wv, y, C, V);
  float scale = 1.0f / 5;
  Vec want_dh = finite_diff([&](const Vec& a) { return ce_ref(a, wv, y, C, V); }, hv);
  Vec want_dw = finite_diff([&](const Vec& a) { return ce_ref(hv, a, y, C, V); }, wv);
  for (double& g : want_dh) g *= scale;
  for (double& g : want_dw) g *= scale;
  std::vector<float> first_dh;
  for (int64_t chunk : {1, 3, 7, 100}) {
    Tensor dh = Tensor::zeros({N, C}, DType::F32), dw = Tensor::zeros({V, C}, DType::F32);
    LossSum r = cross_entropy_forward_backward(h, w, labels, &dh, &dw, scale, chunk);
    EXPECT_EQ(r.count, 5);
    EXPECT_LT(std::fabs(r.loss - want) / want, 1e-6) << "chunk " << chunk;
    std::printf(" chunk %ld: loss %.9g (f64 %.9g)\n", (long)chunk, r.loss, want);
    EXPECT_LT(grad_err("cross-entropy dhidden", dh, want_dh), 1e-4);
    EXPECT_LT(grad_err("cross-entropy dlm_head", dw, want_dw), 1e-4);
    std::vector<float> d = dh.to_f32_vector();
    for (int64_t c = 0; c < C; c++) EXPECT_EQ(d[1 * C + c], 0.0f);  // ignored row
    if (first_dh.empty()) first_dh = d;
    for (size_t i = 0; i < d.size(); i++) EXPECT_NEAR(d[i], first_dh[i], 1e-6);
    // Loss only: the same numbers without gradients.
    LossSum r2 = cross_entropy_forward_backward(h, w, labels, nullptr, nullptr, 1.0f, chunk);
    EXPECT_EQ(r2.count, 5);
    EXPECT_NEAR(r2.loss, r.loss, 1e-9 * want);
  }
}

TEST(CrossEntropy, LargeLogitsAndAllIgnored) {
  int64_t N = 4, C = 3, V = 5;
  Tensor h = randn({N, C}, 30.0f), w = randn({V, C}, 3.0f);  // logits in the hundreds: needs the max shift
  std::vector<int32_t> y = {1, 2, 3, 4};
  LossSum r = cross_entropy_forward_backward(h, w, Tensor::from_i32(y, {N}), nullptr, nullptr);
  double want = ce_ref(to_f64(h), to_f64(w), y, C, V);
  EXPECT_TRUE(std::isfinite(r.loss));
  EXPECT_LT(std::fabs(r.loss - want), 1e-5 * std::max(1.0, want));
  Tensor dh = Tensor::zeros({N, C}, DType::F32);
  LossSum z =
      cross_entropy_forward_backward(h, w, Tensor::from_i32({-100, -100, -100, -100}, {N}), &dh, nullptr);
  EXPECT_EQ(z.count, 0);
  EXPECT_EQ(z.loss, 0.0);
  for (float g : dh.to_f32_vector()) EXPECT_EQ(g, 0.0f);
}

TEST(CrossEntropy, Errors) {
  Tensor h = randn({3, 4}), w = randn({6, 4});
  expect_error(
      [&] {
        cross_entropy_forward_backward(h, w, Tensor::from_i32({0, 6, 1}, {3}), nullptr, nullptr);
      },
      ErrorKind::Shape, {"cross_entropy", "label 6 at row 1", "-100"});
  expect_error(
      [&] {
        cross_entropy_forward_backward(h, w, Tensor::from_i32({0, -1, 1}, {3}), nullptr, nullptr);
      },
      ErrorKind::Shape, {"label -1 at row 1"});
  expect_error(
      [&] {
        cross_entropy_forward_backward(h, w, Tensor::from_i32({0, 1}, {2}), nullptr, nullptr);
      },
      ErrorKind::Shape, {"'labels'", "2 entries for 3 rows"});
  Tensor bad = Tensor::zeros({3, 5}, DType::F32);
  expect_error(
      [&] {
        cross_entropy_forward_backward(h, w, Tensor::from_i32({0, 1, 2}, {3}), &bad, nullptr);
      },
      ErrorKind::Shape, {"'dhidden'", "[3, 4]"});
}
