// Training the LLaMA-Adapter (train/adaption_train.h) on the CPU: loss and gradients of every prompt and
// gate against PEFT's autograd (tests/fixtures/peft/adaption: GQA model, both layers adapted, from
// tools/make_vtok_fixtures.py; tests/fixtures/peft/adaption_train: biased q/k/v/o, one kv head, top layer
// only, from tools/make_adaption_train_fixture.py), the same with gradient checkpointing; gradients against
// central finite differences on packed rows (dense and NF4 k_proj / v_proj); an inference-attached
// adapter gives PEFT's loss in a loss-only pass and refuses a backward; a few AdamW steps on the bundled
// model lower the loss.
#include "train/adaption_train.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "io/safetensors.h"
#include "model/llama_model.h"
#include "optim/optimizer.h"
#include "optim/param_groups.h"
#include "peft/adaption_prompt.h"
#include "train/causal_lm.h"
#include "train_test_util.h"

using namespace qtune;
using namespace qtune_test;

namespace {

const std::string kPeft = std::string(QTUNE_FIXTURES) + "/peft/";
const std::string kBundled = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";

// HF's unshifted labels → qtune's shifted ones (label[t] = labels[t + 1], −100 last).
Tensor shift_labels(const Tensor& labels) {
  const int64_t B = labels.size(0), T = labels.size(1);
  std::vector<int32_t> out(B * T, -100);
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t + 1 < T; t++) out[b * T + t] = labels.data<int32_t>()[b * T + t + 1];
  return Tensor::from_i32(out, {B, T});
}

// Mean loss of one step on (ids, labels), gradients of the mean accumulated into params.
double mean_step(const LlamaModel& m, TrainableParams* params, const Tensor& ids, const Tensor& labels,
                 bool checkpoint = false) {
  LossSum probe = causal_lm_forward_backward(m, ids, labels, nullptr, {});
  StepOptions so;
  so.gradient_checkpointing = checkpoint;
  so.grad_scale = 1.0f / (float)probe.count;
  LossSum r = causal_lm_forward_backward(m, ids, labels, params, so);
  return r.loss / r.count;
}

struct Fixture {
  const char* dir;
  const char* model;
};

}  // namespace

TEST(AdaptionTrain, LossAndGradientsMatchPeft) {
  for (const Fixture& f : {Fixture{"adaption", "llama"}, Fixture{"adaption_train", "llama_bias"}}) {
    SCOPED_TRACE(f.dir);
    LlamaModel m = LlamaModel::load(model_fixture(f.model));
    AdaptionPromptModel ap = AdaptionPromptModel::load(m, kPeft + f.dir);
    auto exp = SafetensorsFile::open(kPeft + std::string(f.dir) + "/expected.safetensors");
    TrainableParams params;
    AdaptionPromptTraining tr(ap, params);
    ASSERT_EQ(params.size(), 2 * ap.layers().size());
    for (const auto& e : params.entries())  // the folder holds PEFT's values
      EXPECT_EQ(e.param.to_f32_vector(), exp->get("param." + e.name).to_f32_vector()) << e.name;
    const Tensor ids = exp->get("ids"), labels = shift_labels(exp->get("labels"));
    const double want = exp->get("loss").to_f32_vector()[0];
    for (bool checkpoint : {false, true}) {
      params.zero_grads();
      const double loss = mean_step(m, &params, ids, labels, checkpoint);
      EXPECT_NEAR(loss, want, 1e-5 * want);
      double worst = 0;
      for (const auto& e : params.entries()) {
        const double err = rel_err(e.grad.to_f32_vector(), exp->get("grad." + e.name).to_f32_vector());
        worst = std::max(worst, err);
        EXPECT_LT(err, 1e-4) << e.name;
      }
      std::printf("%s (checkpointing %s): loss %.6f vs PEFT %.6f, worst gradient rel err %.2e\n", f.dir,
                  checkpoint ? "on" : "off", loss, want, worst);
    }
  }
}

TEST(AdaptionTrain, GradientsMatchFiniteDifferences) {
  // Two packed examples per row (positions restart, attention stays inside each) and one plain row; the
  // prompt rows are seen by every query. GQA model with both layers adapted, and the biased one.
  const Tensor ids = Tensor::from_i32({3, 17, 99, 5, 42, 8, 250, 11, 7, 1, 64, 30, 12, 200}, {2, 7});
  const Tensor labels =
      Tensor::from_i32({17, 99, -100, 42, 8, 250, -100, 1, 64, 30, 12, 200, 9, -100}, {2, 7});
  const Tensor pos = Tensor::from_i32({0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6}, {14});
  const Tensor seq = Tensor::from_i32({0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0}, {2, 7});
  // (Not int8: LLM.int8 rounds the activations too, so its loss is piecewise constant in the prompt and
  // finite differences do not see the straight-through gradient linear_backward gives, as bitsandbytes.)
  LoadOptions nf4;
  nf4.load_in_4bit = true;
  struct Case {
    const char* model;
    const LoadOptions* opts;
    const char* name;
  };
  for (const Case& c : {Case{"llama", nullptr, "llama"}, Case{"llama_bias", nullptr, "llama_bias"},
                        Case{"llama", &nf4, "llama NF4"}}) {
    SCOPED_TRACE(c.name);  // quantized: dA through the dequantized frozen k_proj / v_proj
    LlamaModel m = LlamaModel::load(model_fixture(c.model), Device::CPU, c.opts ? *c.opts : LoadOptions{});
    AdaptionPromptConfig cfg;
    cfg.adapter_len = 3;
    cfg.adapter_layers = 2;
    AdaptionPromptModel ap = AdaptionPromptModel::create(m, cfg, 5);
    ap.layers()[0].gate.data<float>()[0] = 0.7f;  // non-zero gates: gradients reach the prompts
    ap.layers()[1].gate.data<float>()[0] = -0.45f;
    TrainableParams params;
    AdaptionPromptTraining tr(ap, params);
    StepOptions so;
    so.positions = &pos;
    so.seq_ids = &seq;
    so.gradient_checkpointing = true;
    auto loss = [&] { return causal_lm_forward_backward(m, ids, labels, nullptr, so).loss; };
    params.zero_grads();
    causal_lm_forward_backward(m, ids, labels, &params, so);
    for (const auto& e : params.entries()) {
      double norm = 0;
      for (float g : e.grad.to_f32_vector()) norm += (double)g * g;
      EXPECT_GT(std::sqrt(norm), 1e-3) << e.name;  // not a vacuous match
      const int64_t n = e.param.numel();
      for (int64_t i : {0L, 7L, n / 2 + 1, n - 1}) {
        if (i >= n) continue;
        float* w = e.param.data<float>() + i;
        const float w0 = *w, h = 1e-2f;
        *w = w0 + h;
        const double lp = loss();
        *w = w0 - h;
        const double lm = loss();
        *w = w0;
        const double fd = (lp - lm) / (2 * h), g = e.grad.data<float>()[i];
        EXPECT_NEAR(g, fd, 2e-2 * std::max(2e-2, std::fabs(fd))) << e.name << "[" << i << "]";
      }
    }
  }
}

TEST(AdaptionTrain, AnInferenceAdapterRunsLossOnly) {
  LlamaModel m = LlamaModel::load(model_fixture("llama"));
  AdaptionPromptModel ap = AdaptionPromptModel::load(m, kPeft + "adaption");  // attached for inference
  auto exp = SafetensorsFile::open(kPeft + "adaption/expected.safetensors");
  const Tensor ids = exp->get("ids"), labels = shift_labels(exp->get("labels"));
  LossSum r = causal_lm_forward_backward(m, ids, labels, nullptr, {});
  const double want = exp->get("loss").to_f32_vector()[0];
  EXPECT_NEAR(r.loss / r.count, want, 1e-5 * want);
  TrainableParams params;
  params.add("model.layers.0.input_layernorm.weight", m.layers()[0].input_norm);  // backward reaches layer 1
  expect_error([&] { causal_lm_forward_backward(m, ids, labels, &params, {}); }, ErrorKind::Unsupported,
               {"LLaMA-Adapter", "AdaptionPromptTraining"});
}

TEST(AdaptionTrain, LossFallsWithAdamWAndTheAdapterKeepsIt) {
  LlamaModel model = LlamaModel::load(kBundled);
  AdaptionPromptConfig cfg;
  cfg.adapter_len = 10;
  cfg.adapter_layers = 4;
  AdaptionPromptModel ap = AdaptionPromptModel::create(model, cfg, 0);  // zero gates, as PEFT starts
  Tensor ids = Tensor::from_i32({0, 417, 33, 1203, 99, 5, 42, 8, 77, 301, 12, 64, 9, 250, 18, 3}, {2, 8});
  Tensor labels =
      Tensor::from_i32({417, 33, 1203, 99, 5, 42, 8, -100, 301, 12, 64, 9, 250, 18, 3, -100}, {2, 8});
  TrainableParams params;
  std::vector<double> losses;
  std::vector<float> trained_logits;
  {
    AdaptionPromptTraining tr(ap, params);
    std::vector<ParamRef> refs;
    for (const auto& e : params.entries()) refs.push_back({e.name, e.param, e.grad});
    Optimizer opt(OptimizerConfig{}, group_by_weight_decay(refs, 0.0));
    for (int s = 0; s < 8; ++s) {
      params.zero_grads();
      losses.push_back(mean_step(model, &params, ids, labels));
      opt.step(1e-2);
    }
    trained_logits = model.forward(ids).to_f32_vector();
  }
  std::printf("LLaMA-Adapter (%ld params) losses:", (long)params.numel());
  for (double l : losses) std::printf(" %.4f", l);
  std::printf("\n");
  EXPECT_LT(losses.back(), losses.front() - 0.05);
  // After training the inference add-ons (rebuilt from the trained masters) compute the same function.
  EXPECT_NE(ap.layers()[0].gate.data<float>()[0], 0.0f);
  EXPECT_LT(rel_err(model.forward(ids).to_f32_vector(), trained_logits), 1e-5);
}
