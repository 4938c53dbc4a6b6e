// LLaMA-Adapter training on the GPU (bf16 activations; prompts, gates, their gradients and the softmax in
// f32):
//  - the prompt attention op (peft/adaption_attention.h) in bf16 against the CPU op: forward and backward
//    errors against the CPU op on the exact f32 inputs stay within 2x (+1e-3) the error of the CPU op on
//    bf16-rounded inputs with bf16-rounded outputs (the flash-attention rule);
//  - one packed, checkpointed step's prompt and gate gradients on the bundled model against the CPU f32
//    trainer on the same batch and values (the bf16 bound of the other adapters' CUDA tests; the gates as
//    one vector);
//  - AdamW steps on the device lower the loss; the saved folder holds the device values and, loaded on
//    the CPU, gives the GPU's loss at the bf16 level.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>

#include "../train_test_util.h"
#include "core/allocator.h"
#include "optim/optimizer.h"
#include "optim/param_groups.h"
#include "peft/adaption_attention.h"
#include "peft/adaption_prompt.h"
#include "train/adaption_train.h"
#include "train/causal_lm.h"

using namespace qtune;
using namespace qtune_test;

namespace {

const std::string kBundled = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";

using Grads = std::map<std::string, std::vector<float>>;

Tensor randn(const Shape& s, std::mt19937& rng, float scale) {
  std::normal_distribution<float> nd(0.0f, scale);
  Tensor t = Tensor::empty(s, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
  return t;
}

Tensor bf16_round(const Tensor& t) {
  return t.to_dtype(DType::BF16).to_dtype(DType::F32);
}

struct OpOut {
  std::vector<float> out, dq, dk, dv, dg;
};

// The op on (q, k, v, dout) converted to dt on dev; results back as f32 (rounded to bf16 when round_out).
OpOut run_op(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, float g, Device dev,
             DType dt, bool round_out) {
  auto put = [&](const Tensor& t) { return t.to_dtype(dt).to(dev); };
  Tensor tq = put(q), tk = put(k), tv = put(v), tdo = put(dout);
  Tensor out = Tensor::empty(q.shape(), dt, dev),
         probs = Tensor::empty({q.size(0), q.size(1), k.size(0)}, DType::F32, dev);
  adaption_attention_forward(out, probs, tq, tk, tv, g);
  Tensor dq = Tensor::zeros(q.shape(), dt, dev), dk = Tensor::empty(k.shape(), dt, dev),
         dv = Tensor::empty(k.shape(), dt, dev), dg = Tensor::zeros({1}, DType::F32, dev);
  adaption_attention_backward(dq, dk, dv, &dg, tdo, tq, tk, tv, probs, g);
  auto back = [&](const Tensor& t) {
    Tensor c = t.to(Device::CPU).to_dtype(DType::F32);
    return (round_out ? bf16_round(c) : c).to_f32_vector();
  };
  return {back(out), back(dq), back(dk), back(dv), dg.to(Device::CPU).to_f32_vector()};
}

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

AdaptionPromptModel make_adapter(LlamaModel& model, bool nonzero_gates) {
  AdaptionPromptConfig cfg;
  cfg.adapter_len = 10;
  cfg.adapter_layers = 4;
  AdaptionPromptModel ap = AdaptionPromptModel::create(model, cfg, 3);
  if (nonzero_gates)
    for (size_t i = 0; i < ap.layers().size(); ++i)
      ap.layers()[i].gate.data<float>()[0] = 0.6f - 0.3f * (float)i;
  ap.refresh();
  return ap;
}

StepOptions step_options(const Tensor& tpos, const Tensor& tseq, bool checkpoint) {
  StepOptions so;
  so.positions = &tpos;
  so.seq_ids = &tseq;
  so.gradient_checkpointing = checkpoint;
  so.grad_scale = 1.0f / 68.0f;
  return so;
}

Grads step_grads(Device dev, double* loss) {
  LlamaModel model = LlamaModel::load(kBundled, dev);
  AdaptionPromptModel ap = make_adapter(model, true);
  TrainableParams params;
  AdaptionPromptTraining tr(ap, params);
  Tensor tid, tlab, tpos, tseq;
  batch(tid, tlab, tpos, tseq);
  LossSum r = causal_lm_forward_backward(model, tid, tlab, &params, step_options(tpos, tseq, true));
  *loss = r.loss / r.count;
  Grads out;
  for (const auto& e : params.entries()) out[e.name] = e.grad.to_f32_vector();
  return out;
}

}  // namespace

TEST(AdaptionTrainCuda, OpMatchesCpuAtTheBf16Level) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  std::mt19937 rng(5);
  const int64_t N = 300, Hq = 8, Hkv = 2, D = 64, Lp = 10;
  Tensor q = randn({N, Hq, D}, rng, 1.0f), k = randn({Lp, Hkv, D}, rng, 1.0f),
         v = randn({Lp, Hkv, D}, rng, 1.0f), dout = randn({N, Hq, D}, rng, 1.0f);
  const float g = 0.7f;
  const OpOut ref = run_op(q, k, v, dout, g, Device::CPU, DType::F32, false);
  const OpOut low =
      run_op(bf16_round(q), bf16_round(k), bf16_round(v), bf16_round(dout), g, Device::CPU, DType::F32, true);
  const OpOut gpu = run_op(q, k, v, dout, g, Device::CUDA, DType::BF16, false);
  auto check = [&](const char* what, const std::vector<float>& a, const std::vector<float>& b,
                   const std::vector<float>& r) {
    const double eg = rel_err(a, r), el = rel_err(b, r);
    std::printf("%-6s CUDA bf16 vs CPU f32 %.2e, CPU on bf16 inputs %.2e\n", what, eg, el);
    EXPECT_LE(eg, 2 * el + 1e-3) << what;
  };
  check("out", gpu.out, low.out, ref.out);
  check("dq", gpu.dq, low.dq, ref.dq);
  check("dk", gpu.dk, low.dk, ref.dk);
  check("dv", gpu.dv, low.dv, ref.dv);
  check("dgate", gpu.dg, low.dg, ref.dg);
}

TEST(AdaptionTrainCuda, GradientsMatchCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  double loss_cpu = 0, loss_gpu = 0;
  const Grads cpu = step_grads(Device::CPU, &loss_cpu), gpu = step_grads(Device::CUDA, &loss_gpu);
  ASSERT_EQ(cpu.size(), gpu.size());
  // Prompts per tensor; the gates as one vector (a layer's scalar gate gradient can be a near-cancelled sum
  // of thousands of terms: 5e-5 next to 0.1 in the top layer here, so its own relative error says little).
  double num = 0, den = 0, worst = 0, gnum = 0, gden = 0;
  std::string worst_name;
  for (const auto& [name, g] : cpu) {
    const std::vector<float>& h = gpu.at(name);
    const bool gate = name.find("adaption_gate") != std::string::npos;
    if (gate) {
      std::printf("  %s: CPU %.4e GPU %.4e\n", name.c_str(), g[0], h[0]);
      gnum += ((double)h[0] - g[0]) * ((double)h[0] - g[0]), gden += (double)g[0] * g[0];
    } else {
      const double e = rel_err(h, g);
      if (e > worst) worst = e, worst_name = name;
    }
    for (size_t i = 0; i < g.size(); i++)
      num += ((double)h[i] - g[i]) * ((double)h[i] - g[i]), den += (double)g[i] * g[i];
  }
  const double total = std::sqrt(num / den), gates = std::sqrt(gnum / gden);
  std::printf(
      "LLaMA-Adapter: loss CPU %.6f GPU %.6f; %zu gradients, GPU vs CPU relative norm error %.2e "
      "overall, gates %.2e, worst prompt %.2e (%s)\n",
      loss_cpu, loss_gpu, cpu.size(), total, gates, worst, worst_name.c_str());
  EXPECT_LT(gates, 2e-2);
  EXPECT_NEAR(loss_gpu, loss_cpu, 1e-2 * loss_cpu);
  EXPECT_LT(total, 2e-2);
  EXPECT_LT(worst, 6e-2);
}

TEST(AdaptionTrainCuda, LossFallsAndTheFolderHoldsTheDeviceValues) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  const std::string dir = testing::TempDir() + "/cuda_trained_adaption";
  Tensor tid, tlab, tpos, tseq;
  batch(tid, tlab, tpos, tseq);
  Grads want;
  double last = 0;
  {
    LlamaModel model = LlamaModel::load(kBundled, Device::CUDA);
    AdaptionPromptModel ap = make_adapter(model, false);  // zero gates, as PEFT starts
    TrainableParams params;
    AdaptionPromptTraining tr(ap, params);
    std::vector<ParamRef> refs;
    for (const auto& e : params.entries()) refs.push_back({e.name, e.param, e.grad});
    Optimizer opt(OptimizerConfig{}, group_by_weight_decay(refs, 0.0));
    std::vector<double> losses;
    for (int s = 0; s < 8; ++s) {
      params.zero_grads();
      LossSum r = causal_lm_forward_backward(model, tid, tlab, &params, step_options(tpos, tseq, s % 2 == 0));
      losses.push_back(r.loss / r.count);
      opt.step(2e-2);
    }
    last = causal_lm_forward_backward(model, tid, tlab, nullptr, step_options(tpos, tseq, false)).loss / 68.0;
    std::printf("GPU LLaMA-Adapter losses:");
    for (double l : losses) std::printf(" %.4f", l);
    std::printf(" -> %.4f\n", last);
    EXPECT_LT(last, losses.front() - 0.05);
    for (const auto& e : params.entries()) want[e.name] = e.param.to_f32_vector();
    tr.sync_to_host();
    ap.save(dir);
  }
  LlamaModel cpu = LlamaModel::load(kBundled);
  AdaptionPromptModel ap = AdaptionPromptModel::load(cpu, dir);
  for (const AdaptionPromptModel::Layer& l : ap.layers()) {
    const std::string key = "base_model.model.model.layers." + std::to_string(l.index) + ".self_attn.";
    EXPECT_EQ(l.prompt.to_f32_vector(), want.at(key + "adaption_prompt"));
    EXPECT_EQ(l.gate.to_f32_vector(), want.at(key + "adaption_gate"));
  }
  const double on_cpu =
      causal_lm_forward_backward(cpu, tid, tlab, nullptr, step_options(tpos, tseq, false)).loss / 68.0;
  std::printf("the saved folder on the CPU: loss %.4f (GPU %.4f)\n", on_cpu, last);
  EXPECT_NEAR(on_cpu, last, 1e-2 * last);
}
