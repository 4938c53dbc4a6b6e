#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/allocator.h"
#include "core/error.h"
#include "core/tensor.h"

using namespace qtune;

TEST(DType, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to the even one (1.0).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, F16RoundTripMatchesDoubleReference) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-70000.f, 70000.f);
  for (int i = 0; i < 100000; i++) {
    float x = u(rng) * std::pow(2.0f, (float)(rng() % 40) - 30.0f);
    float y = f16_to_f32(f32_to_f16(x));
    // Nearest half: relative error at most 2^-11 for normals, absolute 2^-25 for subnormals; inf past max.
    if (std::fabs(x) > 65520.f) {
      EXPECT_TRUE(std::isinf(y)) << x;
    } else {
      EXPECT_LE(std::fabs((double)y - x), std::max(std::fabs((double)x) * std::ldexp(1.0, -11), std::ldexp(1.0, -25)))
          << x;
    }
  }
  EXPECT_EQ(f16_to_f32(f32_to_f16(65504.f)), 65504.f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
}

TEST(Tensor, ReshapeSliceAndConvert) {
  Tensor t = Tensor::from_f32({1, 2, 3, 4, 5, 6}, {3, 2});
  EXPECT_EQ(t.reshape({2, -1}).shape(), (Shape{2, 3}));
  Tensor s = t.slice0(1, 2);
  EXPECT_EQ(s.data<float>()[0], 3.0f);
  EXPECT_THROW(t.reshape({4, 2}), Error);
  EXPECT_THROW(t.slice0(2, 2), Error);
  auto v = t.to_dtype(DType::BF16).to_f32_vector();
  EXPECT_EQ(v[5], 6.0f);
}

TEST(Tensor, CpuBuildRejectsDeviceWhenNoCuda) {
  if (cuda_available()) GTEST_SKIP() << "a GPU is present";
  EXPECT_THROW(Tensor::empty({4}, DType::F32, Device::CUDA), Error);
}
