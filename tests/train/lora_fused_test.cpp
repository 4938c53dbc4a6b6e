// train/lora_fused on the CPU against float64 loops (lora_fused_ref.h): the three products with and without a
// dropout mask at shapes that are not multiples of anything, and the mask itself: its drop rate, and a chunk
// of rows starting at row r0 getting exactly rows r0.. of the whole step's mask.
#include <gtest/gtest.h>

#include "../ops/op_test_util.h"
#include "lora_fused_ref.h"

using namespace qtune;
using qtune_test::randn;
using qtune_test::rel_err;

TEST(LoraFused, MaskRateAndRowOffsets) {
  const int64_t K = 172, N = 300;
  for (double p : {0.05, 0.3}) {
    LoraMask m = lora_mask(99, 0, K, p);
    int64_t dropped = 0;
    for (int64_t i = 0; i < N * K; i++) dropped += !lora_mask_keeps(m, (uint64_t)i);
    EXPECT_NEAR((double)dropped / (N * K), p, 0.01) << p;
    EXPECT_FLOAT_EQ(m.keep, (float)(1.0 / (1.0 - p)));
    LoraMask chunk = lora_mask(99, 37, K, p);  // rows 37.. of the same step
    for (int64_t i = 0; i < 5 * K; i++) ASSERT_EQ(lora_mask_keeps(chunk, i), lora_mask_keeps(m, 37 * K + i));
  }
  EXPECT_EQ(lora_mask(1, 0, 8, 0.0).threshold, 0u);
}

TEST(LoraFused, CpuMatchesFloat64) {
  struct Case {
    int64_t N, K, r;
    double p;
    int64_t row0;
  } cases[] = {{37, 172, 12, 0.2, 3}, {65, 256, 16, 0.0, 0}, {9, 100, 5, 0.5, 1}};
  for (const Case& c : cases) {
    LoraMask mk = lora_mask(1234, c.row0, c.K, c.p);
    const LoraMask* m = c.p > 0 ? &mk : nullptr;
    Tensor x = randn({c.N, c.K}), w = randn({c.r, c.K}, 0.05f), d = randn({c.N, c.r}), wt = randn({c.K, c.r});
    Tensor out = Tensor::empty({c.N, c.r}, DType::F32);
    lora_down(out, x, w, 1.5f, m);
    EXPECT_LT(rel_err(out, qtune_test::ref_lora_down(x, w, 1.5f, m)), 1e-5);
    for (bool kr : {false, true}) {
      Tensor g = kr ? randn({c.K, c.r}) : randn({c.r, c.K});
      std::vector<double> want = qtune_test::ref_lora_down_grad(g, d, x, 0.7f, m, kr);
      lora_down_grad(g, d, x, 0.7f, m, kr);
      EXPECT_LT(rel_err(g, want), 1e-5);
    }
    Tensor dx = randn({c.N, c.K});
    std::vector<double> want = qtune_test::ref_lora_up_dx(dx, d, wt, m);
    lora_up_dx(dx, d, wt, m);
    EXPECT_LT(rel_err(dx, want), 1e-5);
  }
  Tensor a = randn({3, 5}), at = Tensor::empty({5, 3}, DType::F32);
  transpose_into(at, a);
  EXPECT_EQ(at.data<float>()[2 * 3 + 1], a.data<float>()[1 * 5 + 2]);
}
