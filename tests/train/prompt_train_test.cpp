// Training prompt tuning, P-tuning and prefix tuning (train/prompt_train.h) on the CPU: loss and gradients
// of every trainable tensor against PEFT's autograd (tests/fixtures/peft/<name>/expected.safetensors from
// tools/make_vtok_fixtures.py), gradients against finite differences, and the loss falling over a few
// AdamW steps on the bundled model. Prefix tests skip until the blocks pass BlockInputs::prefixes to the
// attention (see causal_lm.h).
#include "train/prompt_train.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <numeric>

#include "io/safetensors.h"
#include "model/llama_model.h"
#include "optim/optimizer.h"
#include "peft/prompt_learning.h"
#include "tokenizer/tokenizer.h"
#include "train/causal_lm.h"
#include "train_test_util.h"

using namespace qtune;
using namespace qtune_test;

namespace {

const std::string kPeft = std::string(QTUNE_FIXTURES) + "/peft/";

// HF's unshifted labels → qtune's shifted ones (label[t] = labels[t + 1], −100 last).
Tensor shift_labels(const Tensor& labels) {
  const int64_t B = labels.size(0), T = labels.size(1);
  std::vector<int32_t> out(B * T, -100);
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t + 1 < T; t++) out[b * T + t] = labels.data<int32_t>()[b * T + t + 1];
  return Tensor::from_i32(out, {B, T});
}

struct StepLoss {
  double loss = 0;  // mean
  int64_t count = 0;
};

// One forward(+backward) of pt on (ids, labels) with gradients of the mean loss.
StepLoss step(const LlamaModel& m, PromptTraining& pt, TrainableParams* params, const Tensor& ids,
              const Tensor& labels, bool first_token_is_target = true) {
  PromptStep st = pt.prepare(ids, labels, nullptr, nullptr, first_token_is_target);
  StepOptions so;
  so.grad_scale = 1.0f / (float)st.targets;
  st.apply(so);
  LossSum r = causal_lm_forward_backward(m, st.ids, st.labels, params, so);
  if (params) pt.backward(st);
  return {r.loss / r.count, r.count};
}

// Whether the blocks apply StepOptions::prefixes yet: a prefix with large values must change the loss.
bool prefixes_wired(const LlamaModel& m) {
  PromptLearningConfig cfg;
  cfg.peft_type = PromptLearningType::PrefixTuning;
  cfg.num_virtual_tokens = 2;
  PromptLearningModel pl = PromptLearningModel::create(m, cfg, 5);
  TrainableParams p;
  PromptTraining pt(m, pl, p);
  Tensor ids = Tensor::from_i32({1, 5, 17, 42}, {1, 4}), labels = Tensor::from_i32({5, 17, 42, -100}, {1, 4});
  PromptStep st = pt.prepare(ids, labels);
  StepOptions with, without;
  st.apply(with);
  without.positions = with.positions;
  double a = causal_lm_forward_backward(m, ids, labels, nullptr, with).loss;
  double b = causal_lm_forward_backward(m, ids, labels, nullptr, without).loss;
  return a != b;
}

// The adapter of fixture `name` with PEFT's trainable parameters (param.* in expected.safetensors).
PromptLearningModel from_fixture(const LlamaModel& m, const std::string& name, SafetensorsFile& exp) {
  PromptLearningConfig cfg = read_prompt_learning_config(kPeft + name + "/adapter_config.json");
  cfg.prompt_tuning_init = "RANDOM";  // the values come from the fixture
  PromptLearningModel pl = PromptLearningModel::create(m, cfg, 0);
  if (PromptEncoder* enc = pl.encoder()) {
    for (PromptEncoder::Param& p : enc->mutable_params()) p.value.copy_from(exp.get("param." + p.name));
  } else {
    pl.prompt_embeddings().copy_from(exp.get("param.prompt_encoder.default.embedding.weight"));
  }
  pl.refresh();
  return pl;
}

}  // namespace

TEST(PromptTrain, LossAndGradientsMatchPeft) {
  for (const char* name : {"prompt_tuning", "prompt_text", "p_tuning", "prefix", "prefix_proj"}) {
    LlamaModel m = LlamaModel::load(model_fixture("llama"));
    const std::string n = name;
    if (n.rfind("prefix", 0) == 0 && !prefixes_wired(m)) {
      std::printf("%s: skipped (block.cpp does not apply BlockInputs::prefixes yet)\n", name);
      continue;
    }
    auto exp = SafetensorsFile::open(kPeft + n + "/expected.safetensors");
    PromptLearningModel pl = from_fixture(m, n, *exp);
    TrainableParams params;
    PromptTraining pt(m, pl, params);
    StepLoss r = step(m, pt, &params, exp->get("ids"), shift_labels(exp->get("labels")));
    const double want = exp->get("loss").to_f32_vector()[0];
    std::printf("%s: loss %.7f (PEFT %.7f), %ld targets\n", name, r.loss, want, (long)r.count);
    EXPECT_LT(std::fabs(r.loss - want) / want, 2e-6) << name;
    for (const auto& e : params.entries()) {
      double err = rel_err(e.grad.to_f32_vector(), exp->get("grad." + e.name).to_f32_vector());
      std::printf("  %s grad rel err %.2e\n", e.name.c_str(), err);
      EXPECT_LT(err, 1e-4) << name << " " << e.name;
    }
  }
}

// d(mean loss)/d(prompt embeddings) against central differences on its largest coordinates.
TEST(PromptTrain, GradientsMatchFiniteDifferences) {
  LlamaModel m = LlamaModel::load(model_fixture("llama"));
  const bool wired = prefixes_wired(m);
  Tensor ids = Tensor::from_i32({1, 5, 17, 42, 99, 3, 250, 7, 1, 200, 31, 8, 8, 150, 77, 2}, {2, 8});
  Tensor labels =
      Tensor::from_i32({5, 17, 42, 99, 3, 250, 7, -100, 200, 31, -100, 8, 150, 77, 2, -100}, {2, 8});
  for (PromptLearningType type : {PromptLearningType::PromptTuning, PromptLearningType::PrefixTuning}) {
    if (type == PromptLearningType::PrefixTuning && !wired) {
      std::printf("prefix: skipped (block.cpp does not apply BlockInputs::prefixes yet)\n");
      continue;
    }
    PromptLearningConfig cfg;
    cfg.peft_type = type;
    cfg.num_virtual_tokens = 3;
    PromptLearningModel pl = PromptLearningModel::create(m, cfg, 11);
    if (type == PromptLearningType::PrefixTuning)  // N(0, 1) keys saturate the softmax: smaller ones
      for (int64_t i = 0; i < pl.prompt_embeddings().numel(); i++)
        pl.prompt_embeddings().data<float>()[i] *= 0.3f;
    TrainableParams params;
    PromptTraining pt(m, pl, params);
    step(m, pt, &params, ids, labels);
    std::vector<float> g = params.entries().front().grad.to_f32_vector();
    std::vector<int64_t> idx(g.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + 8, idx.end(),
                      [&](int64_t a, int64_t b) { return std::fabs(g[a]) > std::fabs(g[b]); });
    std::vector<float> fd, an;
    const float h = 5e-3f;
    float* w = pl.prompt_embeddings().data<float>();
    for (int k = 0; k < 8; k++) {
      const int64_t i = idx[k];
      const float w0 = w[i];
      w[i] = w0 + h;
      double lp = step(m, pt, nullptr, ids, labels).loss;
      w[i] = w0 - h;
      double lm = step(m, pt, nullptr, ids, labels).loss;
      w[i] = w0;
      fd.push_back((float)((lp - lm) / (2 * h)));
      an.push_back(g[i]);
    }
    double err = rel_err(an, fd);
    std::printf("%s: analytic vs finite-difference gradient rel err %.2e (largest |g| %.3e)\n",
                prompt_learning_type_name(type), err, std::fabs(g[idx[0]]));
    EXPECT_LT(err, 2e-2) << prompt_learning_type_name(type);
  }
}

// A few AdamW steps on the bundled model and a line of its held-out text: the loss falls for each method.
TEST(PromptTrain, LossFallsOnTheBundledModel) {
  const std::string dir = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";
  LlamaModel m = LlamaModel::load(dir);
  const bool wired = prefixes_wired(m);
  auto tok = Tokenizer::load(dir);
  std::ifstream f(dir + "/heldout.txt");
  std::string text((std::istreambuf_iterator<char>(f)), {});
  std::vector<int32_t> all = tok->encode(text.substr(0, 400), true);
  const int64_t T = std::min<int64_t>(32, (int64_t)all.size());
  std::vector<int32_t> lab(all.begin() + 1, all.begin() + T);
  lab.push_back(-100);
  Tensor ids = Tensor::from_i32(std::vector<int32_t>(all.begin(), all.begin() + T), {1, T});
  Tensor labels = Tensor::from_i32(lab, {1, T});
  struct Case {
    const char* name;
    PromptLearningType type;
    bool projection;
  };
  for (const Case& c : {Case{"prompt", PromptLearningType::PromptTuning, false},
                        Case{"p_tuning", PromptLearningType::PTuning, false},
                        Case{"prefix", PromptLearningType::PrefixTuning, false},
                        Case{"prefix_projection", PromptLearningType::PrefixTuning, true}}) {
    if (c.type == PromptLearningType::PrefixTuning && !wired) {
      std::printf("%s: skipped (block.cpp does not apply BlockInputs::prefixes yet)\n", c.name);
      continue;
    }
    PromptLearningConfig cfg;
    cfg.peft_type = c.type;
    cfg.num_virtual_tokens = 8;
    cfg.prefix_projection = c.projection;
    cfg.encoder_hidden_size = 64;
    PromptLearningModel pl = PromptLearningModel::create(m, cfg, 3);
    TrainableParams params;
    PromptTraining pt(m, pl, params);
    std::vector<ParamRef> refs;
    for (const auto& e : params.entries()) refs.push_back({e.name, e.param, e.grad});
    Optimizer opt(OptimizerConfig{}, {ParamGroup{refs, 0.0, 1.0}});
    std::vector<double> losses;
    for (int s = 0; s < 8; s++) {
      params.zero_grads();
      losses.push_back(step(m, pt, &params, ids, labels).loss);
      opt.step(c.type == PromptLearningType::PromptTuning ? 0.1 : 0.01);
      pt.refresh();
    }
    losses.push_back(step(m, pt, nullptr, ids, labels).loss);
    std::printf("%s: loss %.4f -> %.4f over 8 AdamW steps\n", c.name, losses.front(), losses.back());
    EXPECT_LT(losses.back(), losses.front() - 0.05) << c.name;
  }
}

// A row of one example plus padding (collate's layout: padding is its own sequence, positions from 0)
// trains exactly like the example alone; two packed examples in a row are refused.
TEST(PromptTrain, PaddingIsInertAndPackingIsRefused) {
  LlamaModel m = LlamaModel::load(model_fixture("llama"));
  const bool wired = prefixes_wired(m);
  for (PromptLearningType type : {PromptLearningType::PTuning, PromptLearningType::PrefixTuning}) {
    if (type == PromptLearningType::PrefixTuning && !wired) continue;
    PromptLearningConfig cfg;
    cfg.peft_type = type;
    cfg.num_virtual_tokens = 3;
    PromptLearningModel pl = PromptLearningModel::create(m, cfg, 4);
    Tensor ids = Tensor::from_i32({1, 5, 17, 42, 99, 3}, {1, 6});
    Tensor labels = Tensor::from_i32({5, 17, 42, 99, 3, -100}, {1, 6});
    Tensor pids = Tensor::from_i32({1, 5, 17, 42, 99, 3, 0, 0}, {1, 8});
    Tensor plabels = Tensor::from_i32({5, 17, 42, 99, 3, -100, -100, -100}, {1, 8});
    Tensor ppos = Tensor::from_i32({0, 1, 2, 3, 4, 5, 0, 1}, {8}),
           pseq = Tensor::from_i32({0, 0, 0, 0, 0, 0, 1, 1}, {1, 8});
    std::vector<std::vector<float>> grads;
    std::vector<double> losses;
    for (int padded = 0; padded < 2; padded++) {
      TrainableParams params;
      PromptTraining pt(m, pl, params);
      PromptStep st = padded ? pt.prepare(pids, plabels, &ppos, &pseq) : pt.prepare(ids, labels);
      StepOptions so;
      st.apply(so);
      losses.push_back(causal_lm_forward_backward(m, st.ids, st.labels, &params, so).loss);
      pt.backward(st);
      grads.push_back(params.entries().front().grad.to_f32_vector());
    }
    EXPECT_NEAR(losses[0], losses[1], 1e-5 * losses[0]) << prompt_learning_type_name(type);
    EXPECT_LT(rel_err(grads[1], grads[0]), 1e-5) << prompt_learning_type_name(type);
    TrainableParams params;
    PromptTraining pt(m, pl, params);
    Tensor packed_labels = Tensor::from_i32({5, 17, -100, 99, 3, -100, 9, -100}, {1, 8});
    Tensor packed_seq = Tensor::from_i32({0, 0, 0, 1, 1, 1, 2, 2}, {1, 8});
    expect_error([&] { pt.prepare(pids, packed_labels, &ppos, &packed_seq); }, ErrorKind::Unsupported,
                 {"packs 3 examples", "without packing"});
  }
}

// The checkpoint state (P-tuning: the encoder's parameters) round-trips; a mismatched file is refused.
TEST(PromptTrain, StateRoundTrips) {
  LlamaModel m = LlamaModel::load(model_fixture("llama"));
  PromptLearningConfig cfg;
  cfg.peft_type = PromptLearningType::PTuning;
  cfg.num_virtual_tokens = 3;
  PromptLearningModel a = PromptLearningModel::create(m, cfg, 1), b = PromptLearningModel::create(m, cfg, 2);
  TrainableParams pa, pb;
  PromptTraining ta(m, a, pa), tb(m, b, pb);
  const std::string path = testing::TempDir() + "/vtok_state.safetensors";
  ta.save_state(path);
  tb.load_state(path);
  EXPECT_EQ(rel_err(b.prompt_embeddings().to_f32_vector(), a.prompt_embeddings().to_f32_vector()), 0.0);
  cfg.peft_type = PromptLearningType::PromptTuning;
  PromptLearningModel c = PromptLearningModel::create(m, cfg, 3);
  TrainableParams pc;
  PromptTraining tc(m, c, pc);
  expect_error([&] { tc.load_state(path); }, ErrorKind::Format, {"vtok_state.safetensors"});
}
