// rmsnorm_forward on the CPU against a float64 reference, including in place (out aliasing x).
#include "ops/norm.h"

#include "op_test_util.h"

using namespace qtune;
using namespace qtune_test;

static std::vector<double> ref_rmsnorm(const Tensor& x, const Tensor& w, double eps) {
  int64_t C = w.numel(), N = x.numel() / C;
  auto xd = to_f64(x), wd = to_f64(w);
  std::vector<double> y(xd.size());
  for (int64_t n = 0; n < N; n++) {
    double ss = 0;
    for (int64_t c = 0; c < C; c++) ss += xd[n * C + c] * xd[n * C + c];
    double r = 1.0 / std::sqrt(ss / C + eps);
    for (int64_t c = 0; c < C; c++) y[n * C + c] = xd[n * C + c] * r * wd[c];
  }
  return y;
}

TEST(RmsNorm, MatchesFloat64Reference) {
  for (int64_t C : {8, 64, 1000, 4096}) {  // 3·7·4096 rows·C: the OpenMP loop
    Tensor x = randn({3, 7, C}, 3.0f, 0.5f), w = randn({C}, 0.2f, 1.0f);
    Tensor y = Tensor::empty(x.shape(), DType::F32);
    rmsnorm_forward(y, x, w, 1e-5f);
    EXPECT_LT(rel_err(y, ref_rmsnorm(x, w, 1e-5)), 1e-6) << C;
    auto want = ref_rmsnorm(x, w, 1e-6);
    rmsnorm_forward(x, x, w, 1e-6f);
    EXPECT_LT(rel_err(x, want), 1e-6) << "in place " << C;
  }
}

TEST(RmsNorm, EpsDominatesTinyInputs) {
  Tensor x = randn({2, 16}, 1e-4f), w = randn({16}, 0.1f, 1.0f);
  Tensor y = Tensor::empty(x.shape(), DType::F32);
  rmsnorm_forward(y, x, w, 1e-2f);
  EXPECT_LT(rel_err(y, ref_rmsnorm(x, w, 1e-2)), 1e-6);
}

TEST(RmsNorm, WeightSizeMismatch) {
  Tensor x = randn({2, 16}), w = randn({15}), y = Tensor::empty({2, 16}, DType::F32);
  expect_error([&] { rmsnorm_forward(y, x, w, 1e-6f); }, ErrorKind::Shape,
               {"rmsnorm_forward", "'x'", "last dim 15"});
}
