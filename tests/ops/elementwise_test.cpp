// swiglu_forward, add_inplace and convert on the CPU against float64 references.
#include "ops/elementwise.h"

#include "op_test_util.h"
#include "ops/activation.h"

using namespace qtune;
using namespace qtune_test;

TEST(SwiGlu, MatchesFloat64Reference) {
  Tensor g = randn({13, 77}, 4.0f), u = randn({13, 77});
  Tensor out = Tensor::empty(g.shape(), DType::F32);
  swiglu_forward(out, g, u);
  auto gd = to_f64(g), ud = to_f64(u);
  std::vector<double> want(gd.size());
  for (size_t i = 0; i < gd.size(); i++) want[i] = gd[i] / (1 + std::exp(-gd[i])) * ud[i];
  EXPECT_LT(rel_err(out, want), 1e-6);
  Tensor bad = randn({13, 76});
  expect_error([&] { swiglu_forward(out, g, bad); }, ErrorKind::Shape, {"swiglu_forward", "'up'"});
}

TEST(Add, InPlace) {
  Tensor x = randn({5, 9}), y = randn({5, 9});
  auto xd = to_f64(x), yd = to_f64(y);
  for (size_t i = 0; i < xd.size(); i++) xd[i] += yd[i];
  add_inplace(x, y);
  EXPECT_LT(rel_err(x, xd), 1e-7);
  Tensor z = randn({5, 8});
  expect_error([&] { add_inplace(x, z); }, ErrorKind::Shape, {"add_inplace", "does not match"});
}

TEST(Convert, RoundsLikeTheScalarConversions) {
  Tensor x = randn({1000}, 100.0f);
  Tensor b = Tensor::empty({1000}, DType::BF16), h = Tensor::empty({1000}, DType::F16);
  Tensor back = Tensor::empty({1000}, DType::F32);
  convert(b, x);
  convert(h, x);
  for (int i = 0; i < 1000; i++) {
    float f = x.data<float>()[i];
    ASSERT_EQ(b.data<uint16_t>()[i], f32_to_bf16(f));
    ASSERT_EQ(h.data<uint16_t>()[i], f32_to_f16(f));
  }
  convert(back, b);
  EXPECT_LT(rel_err(back, to_f64(x)), 1.0 / 256);  // bf16 keeps 8 significant bits
  Tensor h2 = Tensor::empty({1000}, DType::F16);
  convert(h2, b);  // bf16 -> f16 through f32
  for (int i = 0; i < 1000; i++)
    ASSERT_EQ(h2.data<uint16_t>()[i], f32_to_f16(bf16_to_f32(b.data<uint16_t>()[i])));
  Tensor i32 = Tensor::from_i32({1}, {1});
  expect_error([&] { convert(back, i32); }, ErrorKind::Shape, {"convert", "'in' must be F32 or BF16 or F16"});
}
