// IA3 and bottleneck adapter training on the GPU (bf16 activations, f32 adapter parameters, gradients and
// math): one packed step's gradients of every adapter tensor against the CPU f32 trainer on the same batch
// and the same adapter values, at the bf16 level (the bound of the LoRA test in train_cuda_test.cpp); and
// AdamW steps on the device lower the loss, and the trained tensors come back to the host for saving.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "../train_test_util.h"
#include "core/allocator.h"
#include "optim/optimizer.h"
#include "optim/param_groups.h"
#include "peft/bottleneck_model.h"
#include "peft/ia3_model.h"
#include "train/bottleneck_train.h"
#include "train/causal_lm.h"
#include "train/ia3_train.h"

using namespace qtune;
using namespace qtune_test;

namespace {

const std::string kBundled = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";

using Grads = std::map<std::string, std::vector<float>>;

void batch(Tensor& tid, Tensor& tlab, Tensor& tpos, Tensor& tseq) {
  const int64_t B = 2, T = 40;
  std::vector<int32_t> ids(B * T), labels(B * T), pos(B * T), seq(B * T);
  for (int64_t i = 0; i < B * T; i++) {
    ids[i] = (int32_t)((i * 2654435761u) % 4000 + 5);
    labels[i] = i % 7 == 0 ? -100 : (int32_t)((i * 40503u) % 4000 + 5);
    const int64_t t = i % T;
    seq[i] = t < 17 ? 0 : 1;
    pos[i] = (int32_t)(t < 17 ? t : t - 17);
  }
  tid = Tensor::from_i32(ids, {B, T});
  tlab = Tensor::from_i32(labels, {B, T});
  tpos = Tensor::from_i32(pos, {B * T});
  tseq = Tensor::from_i32(seq, {B, T});
}

// Losses of AdamW steps on one batch with the params on the model's device.
std::vector<double> train_steps(const LlamaModel& model, TrainableParams& params, double lr, int steps) {
  Tensor tid, tlab, tpos, tseq;
  batch(tid, tlab, tpos, tseq);
  std::vector<ParamRef> refs;
  for (const auto& e : params.entries()) refs.push_back({e.name, e.param, e.grad});
  Optimizer opt(OptimizerConfig{}, group_by_weight_decay(refs, 0.0));
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) {
    StepOptions so;
    so.positions = &tpos;
    so.seq_ids = &tseq;
    so.grad_scale = 1.0f / 68.0f;
    params.zero_grads();
    LossSum r = causal_lm_forward_backward(model, tid, tlab, &params, so);
    losses.push_back(r.loss / r.count);
    opt.step(lr);
  }
  return losses;
}

Grads step_grads(const LlamaModel& model, TrainableParams& params) {
  Tensor tid, tlab, tpos, tseq;
  batch(tid, tlab, tpos, tseq);
  StepOptions so;
  so.positions = &tpos;
  so.seq_ids = &tseq;
  so.gradient_checkpointing = true;
  so.grad_scale = 1.0f / 68.0f;
  params.zero_grads();
  causal_lm_forward_backward(model, tid, tlab, &params, so);
  Grads out;
  for (const auto& e : params.entries()) out[e.name] = e.grad.to_f32_vector();
  return out;
}

Grads ia3_grads(Device dev) {
  LlamaModel model = LlamaModel::load(kBundled, dev);
  Ia3Config cfg;
  set_ia3_modules(cfg, "k_proj,v_proj,o_proj,up_proj,down_proj", "up_proj,down_proj");
  Ia3Model ia3 = Ia3Model::create(model, cfg);
  int k = 0;
  for (const NamedTensor& t : ia3.trainable()) {
    float* v = t.tensor.data<float>();
    for (int64_t i = 0; i < t.tensor.numel(); ++i) v[i] = 1.0f + 0.2f * std::sin(0.3f * (float)(i + 5 * k));
    ++k;
  }
  ia3.refresh();
  TrainableParams params;
  Ia3Training tr(ia3, params);
  return step_grads(model, params);
}

Grads bottleneck_grads(Device dev) {
  LlamaModel model = LlamaModel::load(kBundled, dev);
  BottleneckConfig cfg;
  cfg.bottleneck_size = 16;
  cfg.non_linearity = AdapterAct::Gelu;
  BottleneckModel ad = BottleneckModel::create(model, cfg, 9);
  for (const NamedTensor& t : ad.trainable())
    if (t.name.find("adapter_down.weight") == std::string::npos) {
      float* v = t.tensor.data<float>();
      for (int64_t i = 0; i < t.tensor.numel(); ++i) v[i] = 0.02f * std::cos(0.9f * (float)i);
    }
  ad.refresh();
  TrainableParams params;
  BottleneckTraining tr(ad, params);
  return step_grads(model, params);
}

void compare(const char* what, const Grads& cpu, const Grads& gpu) {
  ASSERT_EQ(cpu.size(), gpu.size());
  double num = 0, den = 0, worst = 0;
  std::string worst_name;
  for (const auto& [name, g] : cpu) {
    const std::vector<float>& h = gpu.at(name);
    const double e = rel_err(h, g);
    if (e > worst) worst = e, worst_name = name;
    for (size_t i = 0; i < g.size(); i++)
      num += ((double)h[i] - g[i]) * ((double)h[i] - g[i]), den += (double)g[i] * g[i];
  }
  const double total = std::sqrt(num / den);
  std::printf("%s: %zu gradients, GPU vs CPU relative norm error %.2e overall, worst %.2e (%s)\n", what,
              cpu.size(), total, worst, worst_name.c_str());
  EXPECT_LT(total, 2e-2);
  EXPECT_LT(worst, 6e-2);
}

}  // namespace

TEST(AdapterTrainCuda, Ia3AndBottleneckGradientsMatchCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  compare("IA3", ia3_grads(Device::CPU), ia3_grads(Device::CUDA));
  compare("bottleneck", bottleneck_grads(Device::CPU), bottleneck_grads(Device::CUDA));
}

TEST(AdapterTrainCuda, TrainOnTheGpuAndSave) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  LlamaModel model = LlamaModel::load(kBundled, Device::CUDA);
  const std::string dir_ia3 = testing::TempDir() + "/cuda_trained_ia3",
                    dir_bn = testing::TempDir() + "/cuda_trained_bn";
  Grads want_ia3, want_bn;
  {
    Ia3Model ia3 = Ia3Model::create(model, Ia3Config{});
    {
      TrainableParams params;
      Ia3Training tr(ia3, params);  // puts the plain IA3 layers back when it goes
      std::vector<double> l = train_steps(model, params, 3e-2, 6);
      std::printf("GPU IA3 losses: %.4f -> %.4f\n", l.front(), l.back());
      EXPECT_LT(l.back(), l.front() - 0.05);
      for (const auto& e : params.entries()) want_ia3[e.name] = e.param.to_f32_vector();
      tr.sync_to_host();
    }
    ia3.save(dir_ia3);
    ia3.detach();  // the bottleneck run below sees the base model
  }
  {
    BottleneckConfig cfg;
    cfg.bottleneck_size = 16;
    BottleneckModel ad = BottleneckModel::create(model, cfg, 0);
    TrainableParams params;
    BottleneckTraining tr(ad, params);
    std::vector<double> l = train_steps(model, params, 3e-3, 6);
    std::printf("GPU bottleneck losses: %.4f -> %.4f\n", l.front(), l.back());
    EXPECT_LT(l.back(), l.front() - 0.05);
    for (const auto& e : params.entries()) want_bn[e.name] = e.param.to_f32_vector();
    tr.sync_to_host();
    ad.save(dir_bn);
  }
  // The saved folders hold exactly the device values.
  LlamaModel cpu = LlamaModel::load(kBundled);
  Ia3Model ia3 = Ia3Model::load(cpu, dir_ia3);
  for (const NamedTensor& t : ia3.trainable())
    EXPECT_EQ(t.tensor.to_f32_vector(), want_ia3.at(t.name)) << t.name;
  ia3.detach();
  BottleneckModel bn = BottleneckModel::load(cpu, dir_bn);
  for (const NamedTensor& t : bn.trainable())
    EXPECT_EQ(t.tensor.to_f32_vector(), want_bn.at(t.name)) << t.name;
}
