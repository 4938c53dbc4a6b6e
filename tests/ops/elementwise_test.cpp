// swiglu_forward, add_inplace and convert on the CPU against float64 references.
#include "ops/elementwise.h"

#include "op_test_util.h"
#include "ops/activation.h"

using namespace qtune;
using namespace qtune_test;

// Shapes below and above cpu::kParallelMinWork, so the serial and the OpenMP loops both run.
static const std::vector<Shape> kShapes = {{13, 77}, {64, 1000}};

TEST(SwiGlu, MatchesFloat64Reference) {
  for (const Shape& s : kShapes) {
    Tensor g = randn(s, 4.0f), u = randn(s);
    Tensor out = Tensor::empty(g.shape(), DType::F32);
    swiglu_forward(out, g, u);
    auto gd = to_f64(g), ud = to_f64(u);
    std::vector<double> want(gd.size());
    for (size_t i = 0; i < gd.size(); i++) want[i] = gd[i] / (1 + std::exp(-gd[i])) * ud[i];
    EXPECT_LT(rel_err(out, want), 1e-6) << shape_str(s);
  }
  Tensor g = randn({13, 77}), out = Tensor::empty({13, 77}, DType::F32);
  Tensor bad = randn({13, 76});
  expect_error([&] { swiglu_forward(out, g, bad); }, ErrorKind::Shape, {"swiglu_forward", "'up'"});
}

TEST(Add, InPlace) {
  for (const Shape& s : kShapes) {
    Tensor x = randn(s), y = randn(s);
    auto xd = to_f64(x), yd = to_f64(y);
    for (size_t i = 0; i < xd.size(); i++) xd[i] += yd[i];
    add_inplace(x, y);
    EXPECT_LT(rel_err(x, xd), 1e-7) << shape_str(s);
  }
  Tensor x = randn({5, 9}), z = randn({5, 8});
  expect_error([&] { add_inplace(x, z); }, ErrorKind::Shape, {"add_inplace", "does not match"});
}

TEST(Convert, RoundsLikeTheScalarConversions) {
  for (int64_t n : {1000, 100000}) {
    Tensor x = randn({n}, 100.0f);
    Tensor b = Tensor::empty({n}, DType::BF16), h = Tensor::empty({n}, DType::F16);
    Tensor back = Tensor::empty({n}, DType::F32);
    convert(b, x);
    convert(h, x);
    for (int64_t i = 0; i < n; i++) {
      float f = x.data<float>()[i];
      ASSERT_EQ(b.data<uint16_t>()[i], f32_to_bf16(f));
      ASSERT_EQ(h.data<uint16_t>()[i], f32_to_f16(f));
    }
    convert(back, b);
    EXPECT_LT(rel_err(back, to_f64(x)), 1.0 / 256);  // bf16 keeps 8 significant bits
    Tensor h2 = Tensor::empty({n}, DType::F16);
    convert(h2, b);  // bf16 -> f16 through f32
    for (int64_t i = 0; i < n; i++)
      ASSERT_EQ(h2.data<uint16_t>()[i], f32_to_f16(bf16_to_f32(b.data<uint16_t>()[i])));
  }
  Tensor back = Tensor::empty({1}, DType::F32);
  Tensor i32 = Tensor::from_i32({1}, {1});
  expect_error([&] { convert(back, i32); }, ErrorKind::Shape, {"convert", "'in' must be F32 or BF16 or F16"});
}
