// Training IA3 and bottleneck adapters (train/ia3_train.h, train/bottleneck_train.h) on the CPU: their
// gradients through the whole causal LM equal central finite differences of the loss (f32; output and
// feed-forward IA3 vectors over a model with biases, every bottleneck tensor in both layers, so d(input)
// through the adapters is checked too), and a few AdamW steps on the bundled model lower the loss.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "model/llama_model.h"
#include "optim/optimizer.h"
#include "optim/param_groups.h"
#include "peft/bottleneck_model.h"
#include "peft/ia3_model.h"
#include "tokenizer/tokenizer.h"
#include "train/bottleneck_train.h"
#include "train/causal_lm.h"
#include "train/ia3_train.h"
#include "train_test_util.h"

using namespace qtune;
using namespace qtune_test;

namespace {

const std::string kBundled = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";

// Checks a few entries of each listed gradient against (L(p+h) − L(p−h)) / 2h.
void check_fd(const LlamaModel& model, TrainableParams& params, const std::vector<std::string>& keys) {
  Tensor ids = Tensor::from_i32({3, 17, 99, 5, 42, 8, 250, 11, 7, 1, 64, 30}, {2, 6});
  Tensor labels = Tensor::from_i32({17, 99, 5, 42, 8, -100, 1, 64, 30, 12, 200, 9}, {2, 6});
  params.zero_grads();
  causal_lm_forward_backward(model, ids, labels, &params, {});
  for (const std::string& key : keys) {
    const auto& e = params.at(key);
    for (int64_t i : {0L, 5L, e.param.numel() / 2, e.param.numel() - 1}) {
      if (i >= e.param.numel()) continue;
      float* w = e.param.data<float>() + i;
      const float w0 = *w, h = 1e-2f;
      *w = w0 + h;
      const double lp = causal_lm_forward_backward(model, ids, labels, nullptr, {}).loss;
      *w = w0 - h;
      const double lm = causal_lm_forward_backward(model, ids, labels, nullptr, {}).loss;
      *w = w0;
      const double fd = (lp - lm) / (2 * h), g = e.grad.data<float>()[i];
      EXPECT_NEAR(g, fd, 2e-2 * std::max(2e-2, std::fabs(fd))) << key << "[" << i << "]";
    }
  }
}

// Tokens of the bundled model's held-out text: [B, T] ids and next-token labels.
void text_batch(int64_t B, int64_t T, Tensor& ids, Tensor& labels) {
  auto tok = Tokenizer::load(kBundled);
  std::ifstream f(kBundled + "/heldout.txt");
  std::stringstream ss;
  ss << f.rdbuf();
  std::vector<int32_t> t = tok->encode(ss.str().substr(0, 4000), false);
  std::vector<int32_t> a(B * T), l(B * T);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < T; ++i) {
      a[b * T + i] = t[b * (T + 1) + i];
      l[b * T + i] = t[b * (T + 1) + i + 1];
    }
  ids = Tensor::from_i32(a, {B, T});
  labels = Tensor::from_i32(l, {B, T});
}

// Losses of `steps` AdamW steps on one batch.
std::vector<double> adamw_losses(const LlamaModel& model, TrainableParams& params, double lr, int steps) {
  Tensor ids, labels;
  text_batch(2, 48, ids, labels);
  std::vector<ParamRef> refs;
  for (const auto& e : params.entries()) refs.push_back({e.name, e.param, e.grad});
  Optimizer opt(OptimizerConfig{}, group_by_weight_decay(refs, 0.0));
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) {
    params.zero_grads();
    StepOptions o;
    o.grad_scale = 1.0f / 94.0f;
    LossSum r = causal_lm_forward_backward(model, ids, labels, &params, o);
    losses.push_back(r.loss / r.count);
    opt.step(lr);
  }
  return losses;
}

}  // namespace

TEST(AdapterTrain, Ia3GradientsMatchFiniteDifferences) {
  LlamaModel model = LlamaModel::load(model_fixture("llama_bias"));
  Ia3Config cfg;
  set_ia3_modules(cfg, "q_proj,v_proj,o_proj,up_proj,down_proj", "up_proj,down_proj");
  Ia3Model ia3 = Ia3Model::create(model, cfg);
  int k = 0;
  for (const NamedTensor& t : ia3.trainable()) {  // away from ones, so every path matters
    float* v = t.tensor.data<float>();
    for (int64_t i = 0; i < t.tensor.numel(); ++i) v[i] = 1.0f + 0.3f * std::sin(0.7f * (float)(i + 3 * k));
    ++k;
  }
  TrainableParams params;
  Ia3Training tr(ia3, params);
  EXPECT_EQ(params.size(), 10u);
  check_fd(model, params,
           {"base_model.model.model.layers.0.self_attn.q_proj.ia3_l",  // output vectors (q: bias scaled too)
            "base_model.model.model.layers.0.self_attn.o_proj.ia3_l",
            "base_model.model.model.layers.1.self_attn.v_proj.ia3_l",
            "base_model.model.model.layers.0.mlp.up_proj.ia3_l",  // feed-forward: input vectors
            "base_model.model.model.layers.0.mlp.down_proj.ia3_l",
            "base_model.model.model.layers.1.mlp.down_proj.ia3_l"});
}

TEST(AdapterTrain, BottleneckGradientsMatchFiniteDifferences) {
  // Smooth nonlinearities: relu's kink at 0 is crossed by the finite differences' steps (its derivative is
  // checked on its own in tests/peft/bottleneck_test.cpp).
  for (AdapterAct act : {AdapterAct::Silu, AdapterAct::Gelu}) {
    LlamaModel model = LlamaModel::load(model_fixture("llama"));
    BottleneckConfig cfg;
    cfg.bottleneck_size = 4;
    cfg.non_linearity = act;
    BottleneckModel ad = BottleneckModel::create(model, cfg, 3);
    for (const NamedTensor& t : ad.trainable())  // a zero up-projection would hide the down gradients
      if (t.name.find("adapter_down.weight") == std::string::npos) {
        float* v = t.tensor.data<float>();
        for (int64_t i = 0; i < t.tensor.numel(); ++i) v[i] = 0.3f * std::cos(1.3f * (float)i);
      }
    TrainableParams params;
    BottleneckTraining tr(ad, params);
    EXPECT_EQ(params.size(), 16u);
    std::vector<std::string> keys;
    for (const char* m : {"model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj"})
      for (const char* p :
           {".adapter_down.weight", ".adapter_down.bias", ".adapter_up.weight", ".adapter_up.bias"})
        keys.push_back(std::string("base_model.model.") + m + p);
    SCOPED_TRACE(adapter_act_name(act));
    check_fd(model, params, keys);
  }
}

TEST(AdapterTrain, Ia3LossFallsWithAdamW) {
  LlamaModel model = LlamaModel::load(kBundled);
  Ia3Model ia3 = Ia3Model::create(model, Ia3Config{});
  TrainableParams params;
  std::vector<double> losses;
  {
    Ia3Training tr(ia3, params);
    losses = adamw_losses(model, params, 3e-2, 8);
  }
  std::printf("IA3 (%ld params) losses:", (long)params.numel());
  for (double l : losses) std::printf(" %.4f", l);
  std::printf("\n");
  EXPECT_LT(losses.back(), losses.front() - 0.02);
  for (size_t i = 1; i < losses.size(); ++i) EXPECT_LT(losses[i], losses[i - 1] + 1e-3);
  // The trained vectors are in the Ia3Model (what save() writes) and still applied.
  bool moved = false;
  for (float v : ia3.layers()[0]->l.to_f32_vector()) moved = moved || v != 1.0f;
  EXPECT_TRUE(moved);
}

TEST(AdapterTrain, BottleneckLossFallsWithAdamW) {
  LlamaModel model = LlamaModel::load(kBundled);
  BottleneckConfig cfg;
  cfg.bottleneck_size = 16;
  BottleneckModel ad = BottleneckModel::create(model, cfg, 0);
  TrainableParams params;
  std::vector<double> losses;
  {
    BottleneckTraining tr(ad, params);
    losses = adamw_losses(model, params, 3e-3, 8);
  }
  std::printf("bottleneck (%ld params) losses:", (long)params.numel());
  for (double l : losses) std::printf(" %.4f", l);
  std::printf("\n");
  EXPECT_LT(losses.back(), losses.front() - 0.05);
  for (size_t i = 1; i < losses.size(); ++i) EXPECT_LT(losses[i], losses[i - 1] + 1e-3);
}
