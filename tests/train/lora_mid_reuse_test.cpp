// The reuse of LoRA's mid = (m ⊙ x)·Aᵀ inside a Block pass (train/lora_train.h, train/pass_scope.h) on the
// CPU: a training step gives the loss and gradients of the path without reuse bit for bit (no checkpointing,
// checkpointing, token chunks, kept attention), the backward does take kept mids, and a kept mid is never
// used where it would be stale: after a new micro-batch's set_step, after an evaluation forward, in another
// pass (also when the new input sits at the old one's address), and across an evaluation pass of the same
// block between its forward and backward.
#include <gtest/gtest.h>

#include <random>

#include "train/block.h"
#include "train/causal_lm.h"
#include "train/linear_backward.h"
#include "train/lora_train.h"
#include "train/pass_scope.h"
#include "train_test_util.h"

using namespace qtune;

namespace {

Tensor randn(const Shape& s, float std, uint64_t seed) {
  std::mt19937_64 r(seed);
  std::normal_distribution<float> d(0.0f, std);
  std::vector<float> v(shape_numel(s));
  for (float& x : v) x = d(r);
  return Tensor::from_f32(v, s);
}

// The fixture model with an all-linear LoRA (B moved off zero) in training mode with dropout.
struct Rig {
  LlamaModel model = LlamaModel::load(qtune_test::model_fixture("llama"));
  LoraModel lora = make_lora(model);
  TrainableParams params;
  std::unique_ptr<LoraTraining> tr;
  static LoraModel make_lora(LlamaModel& model) {
    LoraConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    set_target_modules(cfg, "all-linear");
    return LoraModel::create(model, cfg, 3);
  }
  Rig() {
    for (const auto& l : lora.layers()) {
      float* b = l->B.data<float>();
      for (int64_t i = 0; i < l->B.numel(); i++) b[i] = 0.05f * (float)((i * 7919 % 201) - 100) / 100.0f;
    }
    lora.refresh();
    tr = std::make_unique<LoraTraining>(model, lora, params, 5, 0.25);
    tr->set_training(true);
    tr->set_step(4);
  }
  std::vector<float> grads() const {
    std::vector<float> all;
    for (const auto& e : params.entries()) {
      std::vector<float> g = e.grad.to_f32_vector();
      all.insert(all.end(), g.begin(), g.end());
    }
    return all;
  }
};

}  // namespace

TEST(LoraMidReuse, SameLossAndGradientsAsRecomputing) {
  Rig s;
  const int64_t B = 2, T = 11;
  std::vector<int32_t> ids(B * T), labels(B * T), seq(B * T), pos(B * T);
  for (int64_t i = 0; i < B * T; i++) {
    ids[i] = (int32_t)((i * 2654435761u) % 250 + 3);
    labels[i] = i % 4 == 0 ? -100 : (int32_t)((i * 40503u) % 250 + 3);
    seq[i] = i % T < 6 ? 0 : 1;
    pos[i] = (int32_t)(i % T < 6 ? i % T : i % T - 6);
  }
  Tensor tid = Tensor::from_i32(ids, {B, T}), tlab = Tensor::from_i32(labels, {B, T});
  Tensor tpos = Tensor::from_i32(pos, {B * T}), tseq = Tensor::from_i32(seq, {B, T});
  // no checkpointing, checkpointing, + token chunks of 5 rows, + kept attention
  for (int variant = 0; variant < 4; variant++) {
    auto step = [&](bool reuse, double* loss) {
      lora_set_mid_reuse(reuse);
      StepOptions so;
      so.gradient_checkpointing = variant > 0;
      so.token_chunk_rows = variant == 2 ? 5 : 0;
      so.keep_attention = variant == 3 ? 1 : 0;
      so.positions = &tpos;
      so.seq_ids = &tseq;
      s.params.zero_grads();
      *loss = causal_lm_forward_backward(s.model, tid, tlab, &s.params, so).loss;
      lora_set_mid_reuse(true);
      return s.grads();
    };
    double l0 = 0, l1 = 0;
    const std::vector<float> off = step(false, &l0);
    const uint64_t hits = lora_mid_reuse_hits();
    const std::vector<float> on = step(true, &l1);
    EXPECT_EQ(l1, l0) << "variant " << variant;
    EXPECT_EQ(on, off) << "variant " << variant;
    // Unchunked, every LoRA backward takes the mid its block's forward kept (the recompute used it too); in
    // token chunks (5), each backward takes its chunk's recompute's mid but down_proj's (the recompute skips
    // down_proj's forward).
    EXPECT_EQ(lora_mid_reuse_hits() - hits, (variant == 2 ? 6u * 5 : 7u) * s.model.layers().size())
        << "variant " << variant;
  }
}

TEST(LoraMidReuse, StaleMidIsNeverUsed) {
  Rig s;
  const Linear& q = s.model.layers()[0].q;
  const int64_t N = 9, C = q.in_features(), O = q.out_features();
  const Tensor x1 = randn({N, C}, 1.0f, 1), x2 = randn({N, C}, 1.0f, 2), dy = randn({N, O}, 1.0f, 3);
  // The gradients (all adapters') and dx of q's backward at input x in micro-batch `step`, kept mids aside.
  auto reference = [&](const Tensor& x, uint64_t step) {
    lora_set_mid_reuse(false);
    s.tr->set_step(step);
    s.params.zero_grads();
    Tensor dx = Tensor::zeros({N, C}, DType::F32);
    linear_backward(q, &dx, nullptr, nullptr, dy, x, &s.params);
    lora_set_mid_reuse(true);
    std::vector<float> g = s.grads(), d = dx.to_f32_vector();
    g.insert(g.end(), d.begin(), d.end());
    return g;
  };
  auto backward = [&](const Tensor& x) {
    s.params.zero_grads();
    Tensor dx = Tensor::zeros({N, C}, DType::F32);
    linear_backward(q, &dx, nullptr, nullptr, dy, x, &s.params);
    std::vector<float> g = s.grads(), d = dx.to_f32_vector();
    g.insert(g.end(), d.begin(), d.end());
    return g;
  };
  const std::vector<float> want1 = reference(x1, 4), want2 = reference(x2, 4);
  Tensor out = Tensor::zeros({N, O}, DType::F32);
  {  // the recompute's mid serves its backward
    s.tr->set_step(4);
    PassScope pass(true);
    q.forward(out, x1);
    const uint64_t hits = lora_mid_reuse_hits();
    EXPECT_EQ(backward(x1), want1);
    EXPECT_EQ(lora_mid_reuse_hits(), hits + 1);
  }
  {  // kept in micro-batch 3, used in 4: recomputed
    s.tr->set_step(3);
    PassScope pass(true);
    q.forward(out, x1);
    s.tr->set_step(4);
    const uint64_t hits = lora_mid_reuse_hits();
    EXPECT_EQ(backward(x1), want1);
    EXPECT_EQ(lora_mid_reuse_hits(), hits);
  }
  {  // an evaluation forward between the recompute and the backward
    s.tr->set_step(4);
    PassScope pass(true);
    q.forward(out, x1);
    s.tr->set_training(false);
    q.forward(out, x1);
    s.tr->set_training(true);
    EXPECT_EQ(backward(x1), want1);
  }
  {  // kept in one pass; the backward of another pass finds new contents at the same address
    Tensor x = x1.clone();
    {
      PassScope pass(true);
      q.forward(out, x);
    }
    x.copy_from(x2);
    PassScope pass(true);
    const uint64_t hits = lora_mid_reuse_hits();
    EXPECT_EQ(backward(x), want2);
    EXPECT_EQ(lora_mid_reuse_hits(), hits);
  }
}

// An evaluation forward of a block between its training forward and its backward leaves the backward as it
// was (the backward's recompute keeps its own mids).
TEST(LoraMidReuse, EvaluationPassBetweenForwardAndBackward) {
  Rig s;
  const int64_t B = 1, T = 7, N = B * T, C = s.model.config().hidden_size;
  BlockInputs in;
  in.B = B;
  in.T = T;
  std::vector<int32_t> pos(N);
  for (int64_t i = 0; i < N; i++) pos[i] = (int32_t)i;
  in.positions = Tensor::from_i32(pos, {N});
  in.inv_freq = s.model.inv_freq();
  Block blk(s.model.config(), s.model.layers()[1], 1, &s.params);
  const Tensor x = randn({N, C}, 1.0f, 5), d = randn({N, C}, 1.0f, 6);
  auto run = [&](bool eval_between) {
    s.params.zero_grads();
    Tensor y = x.clone(), dx = d.clone();
    BlockSaved saved;
    blk.forward(y, in, saved, true);
    if (eval_between) {
      s.tr->set_training(false);
      Tensor z = randn({N, C}, 1.0f, 7);
      BlockSaved other;
      blk.forward(z, in, other, false);
      s.tr->set_training(true);
    }
    blk.backward(dx, in, saved);
    std::vector<float> g = s.grads(), dv = dx.to_f32_vector();
    g.insert(g.end(), dv.begin(), dv.end());
    return g;
  };
  const std::vector<float> plain = run(false);
  EXPECT_EQ(run(true), plain);
}
