// rope_forward on the CPU against a float64 rotate-half reference (angle = the f32 product pos·inv_freq,
// as HF computes it; the rotation in f64).
#include "ops/rope.h"

#include <array>

#include "op_test_util.h"

using namespace qtune;
using namespace qtune_test;

TEST(Rope, RotateHalfMatchesFloat64Reference) {
  for (auto [N, H, D] : std::vector<std::array<int64_t, 3>>{{19, 3, 32}, {300, 4, 64}}) {  // serial, OpenMP
    Tensor x = randn({N, H, D});
    std::vector<int32_t> pos;
    for (int64_t n = 0; n < N; n++) pos.push_back((int32_t)(rng()() % 4096));
    std::vector<float> inv(D / 2);
    for (int64_t i = 0; i < D / 2; i++) inv[i] = (float)(1.0 / std::pow(10000.0, 2.0 * i / D));
    auto xd = to_f64(x);
    std::vector<double> want(xd.size());
    for (int64_t n = 0; n < N; n++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < D / 2; i++) {
          double a = (double)((float)pos[n] * inv[i]);
          const double* r = &xd[(n * H + h) * D];
          want[(n * H + h) * D + i] = r[i] * std::cos(a) - r[i + D / 2] * std::sin(a);
          want[(n * H + h) * D + i + D / 2] = r[i + D / 2] * std::cos(a) + r[i] * std::sin(a);
        }
    rope_forward(x, Tensor::from_i32(pos, {N}), Tensor::from_f32(inv, {D / 2}));
    EXPECT_LT(rel_err(x, want), 1e-6) << N << " " << H << " " << D;
  }
}

TEST(Rope, PositionZeroIsIdentity) {
  Tensor x = randn({4, 2, 8});
  auto want = to_f64(x);
  rope_forward(x, Tensor::from_i32({0, 0, 0, 0}, {4}), Tensor::from_f32({1, 0.1f, 0.01f, 0.001f}, {4}));
  EXPECT_EQ(rel_err(x, want), 0.0);
}

TEST(Rope, BadShapes) {
  Tensor x = randn({4, 2, 8});
  Tensor pos = Tensor::from_i32({0, 1, 2}, {3});
  Tensor inv = Tensor::from_f32({1, 1, 1, 1}, {4});
  expect_error([&] { rope_forward(x, pos, inv); }, ErrorKind::Shape, {"rope_forward", "'positions'", "[4]"});
  Tensor odd = randn({4, 2, 7});
  expect_error(
      [&] {
        rope_forward(odd, Tensor::from_i32({0, 1, 2, 3}, {4}), inv);
      },
      ErrorKind::Shape, {"head dim must be even"});
}
