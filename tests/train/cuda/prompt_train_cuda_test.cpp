// Prompt tuning, P-tuning and prefix tuning trained on a CUDA model (bf16 activations; the prompt tensors,
// their gradients and the encoders in f32 on the host): one step's loss and gradients against the CPU f32
// step on the same batch (which tests/train/prompt_train_test.cpp checks against PEFT), relative errors at
// the bf16 level. Prefix kinds skip until the blocks apply BlockInputs::prefixes.
#include <gtest/gtest.h>

#include <cstdio>

#include "../train_test_util.h"
#include "core/allocator.h"
#include "io/safetensors.h"
#include "peft/prompt_learning.h"
#include "train/causal_lm.h"
#include "train/prompt_train.h"

using namespace qtune;
using namespace qtune_test;

namespace {

const std::string kPeft = std::string(QTUNE_FIXTURES) + "/peft/";

struct Out {
  double loss = 0, wired_gap = 0;
  std::vector<std::vector<float>> grads;
};

Out run(Device dev, const std::string& name) {
  LlamaModel m = LlamaModel::load(model_fixture("llama"), dev);
  auto exp = SafetensorsFile::open(kPeft + name + "/expected.safetensors");
  PromptLearningConfig cfg = read_prompt_learning_config(kPeft + name + "/adapter_config.json");
  cfg.prompt_tuning_init = "RANDOM";  // the values come from the fixture
  PromptLearningModel pl = PromptLearningModel::create(m, cfg, 0);
  if (PromptEncoder* enc = pl.encoder()) {
    for (PromptEncoder::Param& p : enc->mutable_params()) p.value.copy_from(exp->get("param." + p.name));
  } else {
    pl.prompt_embeddings().copy_from(exp->get("param.prompt_encoder.default.embedding.weight"));
  }
  pl.refresh();
  TrainableParams params;
  PromptTraining pt(m, pl, params);
  Tensor ids = exp->get("ids").clone(), lab = exp->get("labels").clone();
  const int64_t B = ids.size(0), T = ids.size(1);
  std::vector<int32_t> shifted(B * T, -100);
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t + 1 < T; t++) shifted[b * T + t] = lab.data<int32_t>()[b * T + t + 1];
  Tensor labels = Tensor::from_i32(shifted, {B, T});
  PromptStep st = pt.prepare(ids, labels);
  StepOptions so;
  so.grad_scale = 1.0f / (float)st.targets;
  st.apply(so);
  LossSum r = causal_lm_forward_backward(m, st.ids, st.labels, &params, so);
  pt.backward(st);
  Out o;
  o.loss = r.loss / r.count;
  for (const auto& e : params.entries()) o.grads.push_back(e.grad.to_f32_vector());
  if (cfg.peft_type == PromptLearningType::PrefixTuning) {  // does the prefix change the loss at all?
    StepOptions plain;
    plain.positions = so.positions;
    o.wired_gap =
        std::fabs(causal_lm_forward_backward(m, st.ids, st.labels, nullptr, plain).loss / r.count - o.loss);
  }
  return o;
}

}  // namespace

TEST(PromptTrainCuda, OneStepMatchesTheCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  for (const char* name : {"prompt_tuning", "p_tuning", "prefix", "prefix_proj"}) {
    Out cpu = run(Device::CPU, name), gpu = run(Device::CUDA, name);
    if (std::string(name).rfind("prefix", 0) == 0 && cpu.wired_gap == 0) {
      std::printf("%s: skipped (block.cpp does not apply BlockInputs::prefixes yet)\n", name);
      continue;
    }
    double le = std::fabs(gpu.loss - cpu.loss) / cpu.loss;
    std::printf("cuda %-13s loss %.6f (cpu %.6f, rel %.2e)\n", name, gpu.loss, cpu.loss, le);
    EXPECT_LT(le, 1e-2) << name;
    ASSERT_EQ(cpu.grads.size(), gpu.grads.size());
    for (size_t i = 0; i < cpu.grads.size(); i++) {
      double e = rel_err(gpu.grads[i], cpu.grads[i]);
      std::printf("  grad %zu rel err %.2e\n", i, e);
      EXPECT_LT(e, 5e-2) << name << " grad " << i;
    }
  }
}
