// Loss parity with transformers+peft (fixtures tests/fixtures/train/loss_parity* from
// tools/make_trainer_fixtures.py; loss_parity_full: plain torch full fine-tuning): the fixture's adapter init, its 20 steps of two micro-batches each, AdamW
// with its schedule and clipping; every step's loss and gradient norm must be within tol (relative) of
// PEFT's f32 run. Shared by the CPU (1e-3) and CUDA bf16 (2e-2) trainer tests.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "io/safetensors.h"
#include "model/llama_model.h"
#include "optim/clip.h"
#include "optim/optimizer.h"
#include "optim/param_groups.h"
#include "optim/schedule.h"
#include "peft/lora_model.h"
#include "train/causal_lm.h"
#include "train/full_train.h"
#include "train/lora_train.h"

namespace qtune {

inline std::string read_all(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// HF labels [B, T] (unshifted) → the shifted labels causal_lm_forward_backward takes.
inline Tensor shift_labels(const Tensor& l) {
  const int64_t B = l.size(0), T = l.size(1);
  std::vector<int32_t> v(B * T, -100);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) v[b * T + t] = l.data<int32_t>()[b * T + t + 1];
  return Tensor::from_i32(v, {B, T});
}

inline void check_loss_parity(const std::string& name, const std::string& model_name, const LoadOptions& load,
                              Device dev, double tol) {
  const std::string fx = std::string(QTUNE_FIXTURES) + "/train/" + name;
  nlohmann::json exp = nlohmann::json::parse(read_all(fx + "/expected.json"));
  LlamaModel model =
      LlamaModel::load(std::string(QTUNE_FIXTURES) + "/model/" + model_name, dev, load);
  // A fixture without adapter_init/ is full fine-tuning (every weight of the model trains).
  const bool full = !std::filesystem::exists(fx + "/adapter_init");
  std::unique_ptr<LoraModel> lora;
  TrainableParams params;
  std::unique_ptr<LoraTraining> tr;
  std::unique_ptr<FullTraining> ft;
  if (full) {
    ft = std::make_unique<FullTraining>(model, params);
  } else {
    lora = std::make_unique<LoraModel>(LoraModel::load(model, fx + "/adapter_init"));
    tr = std::make_unique<LoraTraining>(model, *lora, params, 0, 0.0);
    tr->set_training(true);
  }
  std::vector<ParamRef> refs;
  for (const auto& e : params.entries()) refs.push_back({e.name, e.param, e.grad});
  Optimizer opt(OptimizerConfig::defaults(OptimizerKind::AdamW),
                group_by_weight_decay(refs, exp["weight_decay"]));
  LrSchedule sched{ScheduleKind::Linear, exp["lr"], exp["warmup_steps"], exp["steps"]};
  auto batches = SafetensorsFile::open(fx + "/batches.safetensors");
  const int steps = exp["steps"];
  double worst = 0;
  for (int s = 0; s < steps; ++s) {
    Tensor ids[2], labels[2];
    int64_t total = 0;
    for (int m = 0; m < 2; ++m) {
      ids[m] = batches->get("ids_" + std::to_string(s) + "_" + std::to_string(m));
      labels[m] = shift_labels(batches->get("labels_" + std::to_string(s) + "_" + std::to_string(m)));
      for (int64_t i = 0; i < labels[m].numel(); ++i) total += labels[m].data<int32_t>()[i] != -100;
    }
    params.zero_grads();
    double loss = 0;
    for (int m = 0; m < 2; ++m) {
      StepOptions so;
      so.grad_scale = 1.0f / (float)total;
      loss += causal_lm_forward_backward(model, ids[m], labels[m], &params, so).loss;
    }
    loss /= (double)total;
    const float norm = clip_grad_norm(opt.groups(), exp["max_grad_norm"]);
    opt.step(sched.lr(s));
    if (tr) tr->refresh();
    if (ft) ft->refresh();
    const double want = exp["losses"][s];
    worst = std::max(worst, std::fabs(loss - want) / std::fabs(want));
    EXPECT_NEAR(loss, want, tol * std::fabs(want)) << "step " << s;
    EXPECT_NEAR(norm, exp["grad_norms"][s].get<double>(), tol * exp["grad_norms"][s].get<double>())
        << "step " << s;
  }
  std::printf("%s (%s): worst relative loss difference over %d steps %.3g\n", name.c_str(), device_name(dev), steps,
              worst);
  // The losses must actually move, or the comparison above says little about the updates.
  EXPECT_GT(std::fabs(exp["losses"][0].get<double>() - exp["losses"][steps - 1].get<double>()), 1e-3);
}


}  // namespace qtune
