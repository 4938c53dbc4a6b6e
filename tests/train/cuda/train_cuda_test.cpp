// GPU training (bf16 activations, f32 LoRA weights/gradients/optimizer states on the device):
//  - per-step losses and gradient norms of LoRA and QLoRA (NF4 + double quant) within 2e-2 of PEFT's f32
//    run for 20 steps (the CPU test's fixtures; the bar for CUDA bf16);
//  - one step's LoRA, DoRA and QDoRA gradients (with dropout, packing and gradient checkpointing) against
//    the CPU f32 trainer on the same batch: relative norm error at the bf16 level; DoRA's losses against
//    PEFT's like LoRA's;
//  - `run_finetune` on the GPU end to end with paged 8-bit AdamW: the loss falls, the adapter is written
//    and loads back with the trained weights.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../loss_parity.h"
#include "../train_test_util.h"
#include "core/allocator.h"
#include "train/lora_train.h"
#include "train/progress.h"
#include "train/trainer.h"

using namespace qtune;
namespace fs = std::filesystem;

namespace {

const std::string kBundled = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";

// The LoRA (or DoRA) gradients of one packed, dropout-on step of a fresh all-linear adapter on the bundled
// model (dense or NF4 base); chunk_rows > 0 runs the checkpointed blocks in token chunks of that many rows.
std::map<std::string, std::vector<float>> lora_grads(Device dev, bool checkpoint, bool dora = false,
                                                     const LoadOptions& load = {}, int64_t chunk_rows = 0,
                                                     int keep_attention = 0) {
  LlamaModel model = LlamaModel::load(kBundled, dev, load);
  LoraConfig cfg;
  cfg.r = 8;
  cfg.lora_alpha = 16;
  cfg.lora_dropout = 0.1;
  cfg.use_dora = dora;
  set_target_modules(cfg, "all-linear");
  LoraModel lora = LoraModel::create(model, cfg, 7);
  // B = 0 at init makes A's gradient zero: give B values so both are exercised (and DoRA's magnitudes
  // move away from the row norms).
  for (const auto& l : lora.layers()) {
    float* b = l->B.data<float>();
    for (int64_t i = 0; i < l->B.numel(); i++) b[i] = 0.01f * (float)((i * 7919 % 201) - 100) / 100.0f;
    if (!dora) continue;
    float* m = l->magnitude.data<float>();
    for (int64_t i = 0; i < l->magnitude.numel(); i++)
      m[i] *= 1.0f + 0.1f * (float)((i * 31 % 11) - 5) / 5.0f;
  }
  lora.refresh();
  TrainableParams params;
  LoraTraining tr(model, lora, params, 11, 0.1);
  tr.set_training(true);
  tr.set_step(3);
  const int64_t B = 2, T = 48;
  std::vector<int32_t> ids(B * T), labels(B * T), pos(B * T), seq(B * T);
  for (int64_t i = 0; i < B * T; i++) {
    ids[i] = (int32_t)((i * 2654435761u) % 4000 + 5);
    labels[i] = i % 5 == 0 ? -100 : (int32_t)((i * 40503u) % 4000 + 5);
    const int64_t t = i % T;
    seq[i] = t < 20 ? 0 : 1;  // two packed examples per row
    pos[i] = (int32_t)(t < 20 ? t : t - 20);
  }
  Tensor tid = Tensor::from_i32(ids, {B, T}), tlab = Tensor::from_i32(labels, {B, T});
  Tensor tpos = Tensor::from_i32(pos, {B * T}), tseq = Tensor::from_i32(seq, {B, T});
  StepOptions so;
  so.positions = &tpos;
  so.seq_ids = &tseq;
  so.gradient_checkpointing = checkpoint;
  so.token_chunk_rows = chunk_rows;
  so.keep_attention = keep_attention;
  so.grad_scale = 1.0f / 77.0f;
  causal_lm_forward_backward(model, tid, tlab, &params, so);
  std::map<std::string, std::vector<float>> out;
  for (const auto& e : params.entries()) out[e.name] = e.grad.to_f32_vector();
  return out;
}

}  // namespace

TEST(TrainCuda, LoraLossParityWithPeft) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  check_loss_parity("loss_parity", "llama", {}, Device::CUDA, 2e-2);
}

TEST(TrainCuda, QloraLossParityWithPeftBitsandbytes) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  LoadOptions q;
  q.load_in_4bit = true;
  q.quant_type = QuantType::NF4;
  q.double_quant = true;
  q.compute_dtype = DType::BF16;
  check_loss_parity("loss_parity_qlora", "mistral", q, Device::CUDA, 2e-2);
}

// CUDA bf16 gradients against the CPU f32 ones for one step (same dropout masks): worst over all adapter
// tensors together and per tensor.
static void expect_grads_match_cpu(const char* what, bool dora, const LoadOptions& load) {
  auto cpu = lora_grads(Device::CPU, false, dora, load);
  // no checkpointing, checkpointing, + token chunks of 37 rows, + the attention outputs kept
  for (int variant = 0; variant < 4; variant++) {
    const bool ck = variant > 0;
    auto gpu = lora_grads(Device::CUDA, ck, dora, load, variant == 2 ? 37 : 0, variant == 3 ? 1 : 0);
    ASSERT_EQ(cpu.size(), gpu.size());
    std::vector<float> all_c, all_g;
    double worst = 0;
    for (auto& [name, g] : cpu) {
      all_c.insert(all_c.end(), g.begin(), g.end());
      all_g.insert(all_g.end(), gpu[name].begin(), gpu[name].end());
      worst = std::max(worst, qtune_test::rel_err(gpu[name], g));
    }
    const double total = qtune_test::rel_err(all_g, all_c);
    std::printf(
        "%s gradients CUDA bf16 vs CPU f32 (checkpointing %d, token chunks %d, kept attention %d): all %.3g, "
        "worst tensor %.3g\n",
        what, ck, variant == 2, variant == 3, total, worst);
    EXPECT_LT(total, 2e-2) << what;
    EXPECT_LT(worst, 6e-2) << what;
  }
}

TEST(TrainCuda, LoraGradientsMatchCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  expect_grads_match_cpu("LoRA", false, {});
}

// The reuse of LoRA mids (kept by the recompute for the backward, q/k/v and gate/up down products in one
// launch: train/lora_train.h) against recomputing each: the same gradients up to bf16 rounding of mid.
TEST(TrainCuda, LoraMidReuseMatchesRecomputing) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  for (int variant = 0; variant < 4; variant++) {
    lora_set_mid_reuse(false);
    auto off = lora_grads(Device::CUDA, variant > 0, false, {}, variant == 2 ? 37 : 0, variant == 3 ? 1 : 0);
    lora_set_mid_reuse(true);
    const uint64_t hits = lora_mid_reuse_hits();
    auto on = lora_grads(Device::CUDA, variant > 0, false, {}, variant == 2 ? 37 : 0, variant == 3 ? 1 : 0);
    std::vector<float> all_off, all_on;
    for (auto& [name, g] : off) {
      all_off.insert(all_off.end(), g.begin(), g.end());
      all_on.insert(all_on.end(), on[name].begin(), on[name].end());
    }
    const double e = qtune_test::rel_err(all_on, all_off);
    std::printf("LoRA gradients, mids reused vs recomputed (variant %d): %.3g, %llu mids taken\n", variant, e,
                (unsigned long long)(lora_mid_reuse_hits() - hits));
    EXPECT_LT(e, 1e-2) << "variant " << variant;
    if (variant > 0) EXPECT_GT(lora_mid_reuse_hits(), hits);
  }
}

TEST(TrainCuda, DoraGradientsMatchCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  expect_grads_match_cpu("DoRA", true, {});
  LoadOptions q;
  q.load_in_4bit = true;
  q.double_quant = true;
  q.compute_dtype = DType::BF16;
  expect_grads_match_cpu("QDoRA (NF4)", true, q);
}

TEST(TrainCuda, DoraLossParityWithPeft) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  check_loss_parity("loss_parity_dora", "llama", {}, Device::CUDA, 2e-2);
}

TEST(TrainCuda, BiasAndModulesToSaveLossParityWithPeft) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  check_loss_parity("loss_parity_bias", "llama_bias", {}, Device::CUDA, 2e-2);
  check_loss_parity("loss_parity_mts", "llama", {}, Device::CUDA, 2e-2);
}

// Full fine-tuning on the GPU: F32 masters on the device, the model's BF16 weights rounded from them.
TEST(TrainCuda, FullFinetuneLossParityWithTorch) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  check_loss_parity("loss_parity_full", "llama", {}, Device::CUDA, 2e-2);
}

TEST(TrainCuda, FinetuneEndToEndPaged8bit) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  const std::string dir = ::testing::TempDir() + "/qtune_train_cuda";
  fs::remove_all(dir);
  fs::create_directories(dir);
  {
    std::ofstream f(dir + "/data.jsonl");
    for (int i = 0; i < 64; ++i)
      f << "{\"prompt\": \"Q: what comes after " << i << "?\\nA:\", \"completion\": \" " << i + 1 << ".\"}\n";
  }
  TrainerArgs a;
  a.device = "cuda";
  a.model_dir = kBundled;
  a.data_path = dir + "/data.jsonl";
  a.out_dir = dir + "/out";
  a.lora.r = 8;
  a.lora.lora_alpha = 16;
  a.lora.lora_dropout = 0.05;
  set_target_modules(a.lora, "all-linear");
  a.load.load_in_4bit = true;
  a.load.quant_type = QuantType::NF4;
  a.load.double_quant = true;
  a.load.compute_dtype = DType::BF16;
  a.optim = "paged_adamw_8bit";
  a.learning_rate = 3e-3;
  a.max_steps = 30;
  a.per_device_train_batch_size = 8;
  a.packing = true;
  a.max_seq_length = 128;
  a.quiet = true;
  TrainResult r = run_finetune(a);
  ASSERT_EQ(r.losses.size(), 30u);
  std::printf("GPU QLoRA on the bundled model: loss %.4f -> %.4f, %.0f tokens/s, GPU peak %s\n",
              r.losses.front(), r.losses.back(), r.tokens_per_s, gpu_peak_mib_text().c_str());
  EXPECT_LT(r.losses.back(), 0.7 * r.losses.front());
  ASSERT_TRUE(fs::exists(a.out_dir + "/adapter_model.safetensors"));
  // The saved adapter holds the trained (device) weights: B moved away from its zero init.
  LlamaModel base = LlamaModel::load(kBundled, Device::CPU);
  LoraModel saved = LoraModel::load(base, a.out_dir);
  double bsum = 0;
  for (const auto& l : saved.layers())
    for (float v : l->B.to_f32_vector()) bsum += std::fabs(v);
  EXPECT_GT(bsum, 0.0);
}
