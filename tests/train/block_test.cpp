// Block (train/block.h) on its own: the training forward equals the inference forward's layer output,
// checkpointing keeps only the block input, d(input) does not depend on which weights are trainable,
// a block's input gradient matches float64-accurate finite differences of the f32 forward in one
// direction (a directional-derivative check), and misuse errors.
#include "train/block.h"

#include <gtest/gtest.h>

#include <random>

#include "model/llama_model.h"
#include "ops/ops.h"
#include "train_test_util.h"

using namespace qtune;
using namespace qtune_test;

namespace {

Tensor randn(const Shape& s, float std, uint64_t seed) {
  std::mt19937_64 r(seed);
  std::normal_distribution<float> d(0.0f, std);
  std::vector<float> v(shape_numel(s));
  for (float& x : v) x = d(r);
  return Tensor::from_f32(v, s);
}

BlockInputs inputs(const LlamaModel& m, int64_t B, int64_t T) {
  BlockInputs in;
  in.B = B;
  in.T = T;
  std::vector<int32_t> pos(B * T);
  for (int64_t i = 0; i < B * T; i++) pos[i] = (int32_t)(i % T);
  in.positions = Tensor::from_i32(pos, {B * T});
  in.inv_freq = m.inv_freq();
  return in;
}

// Σ out·R for the block applied to x.
double block_dot(const Block& blk, const BlockInputs& in, const Tensor& x, const Tensor& R) {
  Tensor y = x.clone();
  BlockSaved s;
  blk.forward(y, in, s, true);
  std::vector<float> a = y.to_f32_vector(), r = R.to_f32_vector();
  double sum = 0;
  for (size_t i = 0; i < a.size(); i++) sum += (double)a[i] * r[i];
  return sum;
}

}  // namespace

TEST(Block, CheckpointingKeepsOnlyTheInput) {
  LlamaModel m = LlamaModel::load(model_fixture("llama"));
  const int64_t B = 2, T = 5, N = B * T, C = m.config().hidden_size;
  BlockInputs in = inputs(m, B, T);
  Block blk(m.config(), m.layers()[0], 0, nullptr);
  Tensor x = randn({N, C}, 1.0f, 1), x2 = x.clone();
  BlockSaved full, ck;
  blk.forward(x, in, full, false);
  blk.forward(x2, in, ck, true);
  EXPECT_EQ(x.to_f32_vector(), x2.to_f32_vector());
  EXPECT_TRUE(full.full);
  EXPECT_FALSE(ck.full);
  EXPECT_EQ(ck.activation_bytes(), N * C * 4);  // the input only
  EXPECT_GT(full.activation_bytes(), 5 * N * C * 4);
  Tensor d1 = randn({N, C}, 1.0f, 2), d2 = d1.clone();
  blk.backward(d1, in, full);
  blk.backward(d2, in, ck);
  EXPECT_EQ(d1.to_f32_vector(), d2.to_f32_vector());
  EXPECT_FALSE(full.full);  // activations dropped after backward
}

TEST(Block, InputGradientIndependentOfTrainableSetAndMatchesDirectionalDerivative) {
  LlamaModel m = LlamaModel::load(model_fixture("llama_bias"));
  const int64_t B = 1, T = 6, N = B * T, C = m.config().hidden_size;
  BlockInputs in = inputs(m, B, T);
  TrainableParams all;
  register_full_finetune(all, m);
  Block frozen(m.config(), m.layers()[1], 1, nullptr), trained(m.config(), m.layers()[1], 1, &all);
  Tensor x = randn({N, C}, 1.0f, 3), R = randn({N, C}, 1.0f, 4);
  Tensor d1 = R.clone(), d2 = R.clone();
  for (auto [blk, d] : {std::pair{&frozen, &d1}, {&trained, &d2}}) {
    Tensor y = x.clone();
    BlockSaved s;
    blk->forward(y, in, s, false);
    blk->backward(*d, in, s);
  }
  EXPECT_EQ(d1.to_f32_vector(), d2.to_f32_vector());
  double gnorm = 0;
  for (float g : all.at("model.layers.1.mlp.down_proj.bias").grad.to_f32_vector()) gnorm += g * g;
  EXPECT_GT(gnorm, 0.0);
  EXPECT_EQ(all.at("model.layers.0.mlp.down_proj.bias").grad.to_f32_vector(),
            std::vector<float>(C, 0.0f));  // another layer: untouched
  // Directional derivative along a random u: (f(x + hu) − f(x − hu)) / 2h ≈ ⟨d(input), u⟩.
  Tensor u = randn({N, C}, 1.0f, 5);
  std::vector<float> xv = x.to_f32_vector(), uv = u.to_f32_vector(), dv = d1.to_f32_vector();
  double h = 1e-2, want = 0;
  for (size_t i = 0; i < dv.size(); i++) want += (double)dv[i] * uv[i];
  std::vector<float> xp(xv), xm(xv);
  for (size_t i = 0; i < xv.size(); i++) xp[i] += (float)(h * uv[i]), xm[i] -= (float)(h * uv[i]);
  double got = (block_dot(frozen, in, Tensor::from_f32(xp, {N, C}), R) -
                block_dot(frozen, in, Tensor::from_f32(xm, {N, C}), R)) /
               (2 * h);
  std::printf("  block directional derivative: analytic %.7g, finite difference %.7g\n", want, got);
  EXPECT_LT(std::fabs(got - want) / std::fabs(want), 1e-3);
}

TEST(Block, Errors) {
  LlamaModel m = LlamaModel::load(model_fixture("llama"));
  BlockInputs in = inputs(m, 1, 4);
  Block blk(m.config(), m.layers()[0], 0, nullptr);
  BlockSaved s;
  Tensor d = Tensor::zeros({4, m.config().hidden_size}, DType::F32);
  expect_error([&] { blk.backward(d, in, s); }, ErrorKind::Usage, {"block 0", "no saved forward"});
  Tensor bad = Tensor::zeros({3, m.config().hidden_size}, DType::F32);
  expect_error([&] { blk.forward(bad, in, s, false); }, ErrorKind::Shape, {"block 0 forward", "[4, 64]"});
}
