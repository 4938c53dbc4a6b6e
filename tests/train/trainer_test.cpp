// The trainer: per-step LoRA, DoRA and QLoRA (bitsandbytes NF4 + double quant) training losses equal
// transformers+peft's for 20 steps (f32 CPU; fixtures tests/fixtures/train/loss_parity* from
// tools/make_trainer_fixtures.py), the LoRA and DoRA training adapters' gradients against finite
// differences (with dropout, biases, an NF4 base), and run_finetune end to end on the bundled model: loss
// falls, the PEFT folder / CSV / PNG are written, an interrupted run resumed from its checkpoint continues
// bit for bit, and bad arguments fail before training.
#include "train/trainer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/safetensors.h"
#include "loss_parity.h"
#include "model/llama_model.h"
#include "optim/clip.h"
#include "optim/optimizer.h"
#include "optim/param_groups.h"
#include "optim/schedule.h"
#include "peft/dora_ops.h"
#include "peft/lora_model.h"
#include "train/causal_lm.h"
#include "train/collate.h"
#include "train/full_train.h"
#include "train/lora_train.h"
#include "train_test_util.h"

using namespace qtune;
namespace fs = std::filesystem;

namespace {

const std::string kBundled = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";

std::string tiny_data(const std::string& dir, int rows) {
  fs::create_directories(dir);
  const std::string p = dir + "/data.jsonl";
  std::ofstream f(p);
  for (int i = 0; i < rows; ++i)
    f << "{\"prompt\": \"Q: what is " << i << " plus one?\\nA:\", \"completion\": \" It is " << i + 1
      << ".\"}\n";
  return p;
}

TrainerArgs tiny_args(const std::string& dir) {
  TrainerArgs a;
  a.device = "cpu";  // bit-exact resume is a CPU promise
  a.model_dir = kBundled;
  a.data_path = tiny_data(dir, 24);
  a.out_dir = dir + "/out";
  a.lora.r = 4;
  a.lora.lora_alpha = 8;
  a.lora.lora_dropout = 0.1;
  set_target_modules(a.lora, "q_proj,v_proj,down_proj");
  a.learning_rate = 3e-3;
  a.max_steps = 6;
  a.per_device_train_batch_size = 2;
  a.gradient_accumulation_steps = 2;
  a.packing = true;
  a.max_seq_length = 64;
  a.eval_split = 0.2;
  a.eval_steps = 3;
  a.quiet = true;
  return a;
}

}  // namespace

TEST(Trainer, LossParityWithPeft) {
  check_loss_parity("loss_parity", "llama", {}, Device::CPU, 1e-3);
}
TEST(Trainer, DoraLossParityWithPeft) {
  check_loss_parity("loss_parity_dora", "llama", {}, Device::CPU, 1e-3);
}

// PEFT's bias="all" (every Linear bias trained, targeted ones saved as ".base_layer.bias") and
// modules_to_save (lm_head and the embedding trained as full copies, on an untied model).
TEST(Trainer, BiasAndModulesToSaveLossParityWithPeft) {
  check_loss_parity("loss_parity_bias", "llama_bias", {}, Device::CPU, 1e-3);
  check_loss_parity("loss_parity_mts", "llama", {}, Device::CPU, 1e-3);
}

TEST(Trainer, FullFinetuneLossParityWithTorch) {
  check_loss_parity("loss_parity_full", "llama", {}, Device::CPU, 1e-3);
}
TEST(Trainer, QloraLossParityWithPeftBitsandbytes) {
  LoadOptions q;  // bitsandbytes NF4 + double quant of the same f32 weights, quantized while loading
  q.load_in_4bit = true;
  q.quant_type = QuantType::NF4;
  q.double_quant = true;
  check_loss_parity("loss_parity_qlora", "mistral", q, Device::CPU, 1e-3);
}

TEST(Trainer, LoraAdapterGradientMatchesFiniteDifference) {
  LlamaModel model = LlamaModel::load(std::string(QTUNE_FIXTURES) + "/model/llama");
  LoraModel lora = LoraModel::load(model, std::string(QTUNE_FIXTURES) + "/train/loss_parity/adapter_init");
  TrainableParams params;
  LoraTraining tr(model, lora, params, 5, 0.25);  // with dropout: the masks must repeat in backward
  tr.set_training(true);
  tr.set_step(3);
  Tensor ids = Tensor::from_i32({3, 17, 99, 5, 42, 8, 250, 11}, {1, 8});
  Tensor labels = Tensor::from_i32({17, 99, 5, 42, 8, 250, 11, -100}, {1, 8});
  params.zero_grads();
  causal_lm_forward_backward(model, ids, labels, &params, {});
  for (const char* key : {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                          "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"}) {
    const auto& e = params.at(key);
    for (int64_t i : {0L, 7L, e.param.numel() - 1}) {
      float* w = e.param.data<float>() + i;
      const float w0 = *w, h = 1e-2f;
      *w = w0 + h;
      tr.refresh();
      const double lp = causal_lm_forward_backward(model, ids, labels, nullptr, {}).loss;
      *w = w0 - h;
      tr.refresh();
      const double lm = causal_lm_forward_backward(model, ids, labels, nullptr, {}).loss;
      *w = w0;
      tr.refresh();
      const double fd = (lp - lm) / (2 * h), g = e.grad.data<float>()[i];
      EXPECT_NEAR(g, fd, 2e-2 * std::max(1e-2, std::fabs(fd))) << key << "[" << i << "]";
    }
  }
}

// Token chunks (BlockInputs::chunk_rows) change only the order of the work: LoRA and DoRA with dropout on
// packed rows give the unchunked step's loss and gradients, so the chunks see the whole step's masks.
TEST(Trainer, TokenChunksGiveTheSameLoraGradients) {
  for (bool dora : {false, true}) {
    LlamaModel model = LlamaModel::load(std::string(QTUNE_FIXTURES) + "/model/llama");
    LoraConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.use_dora = dora;
    set_target_modules(cfg, "all-linear");
    LoraModel lora = LoraModel::create(model, cfg, 3);
    for (const auto& l : lora.layers()) {
      float* b = l->B.data<float>();
      for (int64_t i = 0; i < l->B.numel(); i++) b[i] = 0.05f * (float)((i * 7919 % 201) - 100) / 100.0f;
    }
    lora.refresh();
    TrainableParams params;
    LoraTraining tr(model, lora, params, 5, 0.25);
    tr.set_training(true);
    tr.set_step(4);
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
    auto grads = [&](int64_t chunk_rows, double* loss) {
      StepOptions so;
      so.gradient_checkpointing = true;
      so.token_chunk_rows = chunk_rows;
      so.positions = &tpos;
      so.seq_ids = &tseq;
      params.zero_grads();
      *loss = causal_lm_forward_backward(model, tid, tlab, &params, so).loss;
      std::vector<float> all;
      for (const auto& e : params.entries()) {
        std::vector<float> g = e.grad.to_f32_vector();
        all.insert(all.end(), g.begin(), g.end());
      }
      return all;
    };
    double l0 = 0, l1 = 0;
    const std::vector<float> whole = grads(0, &l0), chunked = grads(5, &l1);  // rows [0,5) … [20,22)
    EXPECT_NEAR(l1, l0, 1e-6 * l0) << (dora ? "DoRA" : "LoRA");
    EXPECT_LT(qtune_test::rel_err(chunked, whole), 1e-5) << (dora ? "DoRA" : "LoRA");
  }
}

// DoRA's training adapter (dora_ops.h) against central differences of the loss: with dropout (the
// (d − 1)·xd·Wᵀ term and its own backward), a base with biases, and an NF4 base (QDoRA); A, B and the
// magnitude all moved away from their init so every gradient term is exercised.
TEST(Trainer, DoraGradientsMatchFiniteDifference) {
  struct Case {
    const char* model;
    bool nf4;
    double dropout;
  };
  for (Case c :
       {Case{"llama_bias", false, 0.25}, Case{"llama", true, 0.25}, Case{"llama_bias", false, 0.0}}) {
    LoadOptions load;
    load.load_in_4bit = c.nf4;
    load.double_quant = c.nf4;
    LlamaModel model = LlamaModel::load(std::string(QTUNE_FIXTURES) + "/model/" + c.model, Device::CPU, load);
    LoraConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.use_dora = true;
    set_target_modules(cfg, "q_proj,v_proj,down_proj");
    LoraModel lora = LoraModel::create(model, cfg, 3);
    for (const auto& l : lora.layers()) {
      float* b = l->B.data<float>();
      for (int64_t i = 0; i < l->B.numel(); i++) b[i] = 0.05f * (float)((i * 7919 % 201) - 100) / 100.0f;
      float* m = l->magnitude.data<float>();
      for (int64_t i = 0; i < l->magnitude.numel(); i++)
        m[i] *= 1.0f + 0.2f * (float)((i * 31 % 11) - 5) / 5.0f;
    }
    lora.refresh();
    TrainableParams params;
    LoraTraining tr(model, lora, params, 5, c.dropout);
    tr.set_training(true);
    tr.set_step(2);
    Tensor ids = Tensor::from_i32({3, 17, 99, 5, 42, 8, 250, 11}, {1, 8});
    Tensor labels = Tensor::from_i32({17, 99, 5, 42, 8, 250, 11, -100}, {1, 8});
    params.zero_grads();
    causal_lm_forward_backward(model, ids, labels, &params, {});
    std::map<std::string, Linear*> linears;
    for (auto& [name, lin] : linear_modules(model)) linears[name] = lin;
    double worst = 0;
    for (const auto& layer : lora.layers()) {
      if (layer->module.find("layers.1.self_attn.q_proj") == std::string::npos &&
          layer->module.find("layers.0.mlp.down_proj") == std::string::npos)
        continue;
      const Linear& base = *linears.at(layer->module);
      // PEFT detaches the row norm: hold d = m / norm fixed while A or B move (rescale m with the norm).
      auto norm_of = [&] {
        Tensor n = Tensor::empty({layer->B.size(0)}, DType::F32);
        dora_weight_norm(n, dora_dense_weight(base), layer->A, layer->B, (float)layer->scale);
        return n;
      };
      const Tensor n0 = norm_of(), m0 = layer->magnitude.clone();
      for (const char* part : {"lora_A.weight", "lora_B.weight", "lora_magnitude_vector"}) {
        const auto& e = params.at("base_model.model." + layer->module + "." + part);
        const bool mag = std::string(part) == "lora_magnitude_vector";
        for (int64_t i : {0L, 5L, e.param.numel() - 1}) {
          float* w = e.param.data<float>() + i;
          const float w0 = *w, h = 1e-2f;
          auto loss_at = [&](float v) {
            *w = v;
            if (!mag) {
              const Tensor n1 = norm_of();
              for (int64_t o = 0; o < n0.numel(); ++o)
                layer->magnitude.data<float>()[o] =
                    m0.data<float>()[o] * n1.data<float>()[o] / n0.data<float>()[o];
            }
            tr.refresh();
            const double l = causal_lm_forward_backward(model, ids, labels, nullptr, {}).loss;
            *w = w0;
            layer->magnitude.copy_from(m0);
            tr.refresh();
            return l;
          };
          const double fd = (loss_at(w0 + h) - loss_at(w0 - h)) / (2 * h), g = e.grad.data<float>()[i];
          worst = std::max(worst, std::fabs(g - fd) / std::max(1e-2, std::fabs(fd)));
          EXPECT_NEAR(g, fd, 2e-2 * std::max(1e-2, std::fabs(fd)))
              << c.model << " " << layer->module << "." << part << "[" << i << "]";
        }
      }
    }
    std::printf("  DoRA %s%s, dropout %.2f: worst gradient rel err vs finite differences %.3g\n", c.model,
                c.nf4 ? " NF4" : "", c.dropout, worst);
  }
}

TEST(Trainer, EndToEndAndResumeBitIdentical) {
  const std::string dir = testing::TempDir() + "qtune_trainer_e2e";
  fs::remove_all(dir);
  TrainerArgs a = tiny_args(dir + "/straight");
  a.save_steps = 2;
  TrainResult straight = run_finetune(a);
  ASSERT_EQ(straight.losses.size(), 6u);
  EXPECT_LT(straight.losses.back(), straight.losses.front());
  EXPECT_EQ(straight.eval_losses.size(), 2u);
  for (const char* f :
       {"adapter_config.json", "adapter_model.safetensors", "training_log.csv", "loss_curve.png",
        "checkpoint-2/optimizer.safetensors", "checkpoint-4/trainer_state.json"})
    EXPECT_TRUE(fs::exists(a.out_dir + "/" + f)) << f;
  const std::string csv = read_all(a.out_dir + "/training_log.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 7);  // header + 6 steps
  EXPECT_EQ(csv.rfind("step,loss,lr,grad_norm,tokens_per_s,eval_loss\n", 0), 0u);

  TrainerArgs b = tiny_args(dir + "/resumed");
  b.save_steps = 2;
  b.stop_after_steps = 3;  // "killed" after step 3: checkpoint-2 is the newest
  TrainResult first = run_finetune(b);
  EXPECT_TRUE(first.stopped_early);
  b.stop_after_steps = -1;
  b.resume = true;
  TrainResult rest = run_finetune(b);
  ASSERT_EQ(rest.losses.size(), 6u);
  for (size_t i = 0; i < 6; ++i)
    EXPECT_EQ(rest.losses[i], straight.losses[i]) << "step " << i + 1;  // bit for bit
  EXPECT_EQ(read_all(a.out_dir + "/adapter_model.safetensors"),
            read_all(b.out_dir + "/adapter_model.safetensors"));
}

// --full-finetune end to end: the model folder (F32 safetensors + config + tokenizer) loads back as a
// model whose logits differ from the base, and a run killed after step 3 resumes from checkpoint-2 bit for
// bit; quantized bases and --adapter are refused before training.
TEST(Trainer, FullFinetuneWritesAModelAndResumesBitIdentical) {
  const std::string dir = testing::TempDir() + "qtune_trainer_full";
  fs::remove_all(dir);
  auto full_args = [&](const std::string& sub) {
    TrainerArgs a = tiny_args(dir + "/" + sub);
    a.peft_type = "full";
    a.learning_rate = 1e-4;
    a.save_steps = 2;
    return a;
  };
  TrainerArgs a = full_args("straight");
  TrainResult straight = run_finetune(a);
  ASSERT_EQ(straight.losses.size(), 6u);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json",
                        "checkpoint-2/model.safetensors", "checkpoint-4/optimizer.safetensors"})
    EXPECT_TRUE(fs::exists(a.out_dir + "/" + f)) << f;
  EXPECT_FALSE(fs::exists(a.out_dir + "/adapter_config.json"));
  LlamaModel base = LlamaModel::load(kBundled), tuned = LlamaModel::load(a.out_dir);
  Tensor ids = Tensor::from_i32({5, 17, 99, 42}, {1, 4});
  const std::vector<float> lb = base.forward(ids).to_f32_vector(), lt = tuned.forward(ids).to_f32_vector();
  double diff = 0;
  for (size_t i = 0; i < lb.size(); ++i) diff = std::max(diff, (double)std::fabs(lb[i] - lt[i]));
  EXPECT_GT(diff, 1e-3);

  TrainerArgs b = full_args("resumed");
  b.stop_after_steps = 3;
  EXPECT_TRUE(run_finetune(b).stopped_early);
  b.stop_after_steps = -1;
  b.resume = true;
  TrainResult rest = run_finetune(b);
  ASSERT_EQ(rest.losses.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(rest.losses[i], straight.losses[i]) << "step " << i + 1;
  EXPECT_EQ(read_all(a.out_dir + "/model.safetensors"), read_all(b.out_dir + "/model.safetensors"));

  TrainerArgs q = full_args("q");
  q.load.load_in_4bit = true;
  try {
    run_finetune(q);
    ADD_FAILURE() << "a 4-bit base was accepted for full fine-tuning";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Usage);
    EXPECT_NE(std::string(e.what()).find("4/8-bit"), std::string::npos) << e.what();
  }
}

TEST(Trainer, ContinuesAnAdapterAndTrainsChatRows) {
  const std::string dir = testing::TempDir() + "qtune_trainer_chat";
  fs::remove_all(dir);
  fs::create_directories(dir);
  TrainerArgs a = tiny_args(dir);
  {
    std::ofstream f(dir + "/chat.jsonl");
    for (int i = 0; i < 12; ++i)
      f << "{\"messages\": [{\"role\": \"user\", \"content\": \"count " << i
        << "\"}, {\"role\": \"assistant\", \"content\": \"" << i + 1 << "\"}]}\n";
  }
  a.data_path = dir + "/chat.jsonl";  // the bundled tokenizer's ChatML template
  a.completion_only_loss = true;
  a.eval_split = 0;
  a.max_steps = 4;
  TrainResult first = run_finetune(a);
  EXPECT_LT(first.losses.back(), first.losses.front());
  TrainerArgs b = a;
  b.adapter_dir = a.out_dir;
  b.out_dir = dir + "/continued";
  b.max_steps = 2;
  TrainResult more = run_finetune(b);
  // Continuing starts from the trained adapter: its first loss is near where the first run ended.
  EXPECT_LT(more.losses.front(), first.losses.front());
  EXPECT_NE(read_all(a.out_dir + "/adapter_model.safetensors"),
            read_all(b.out_dir + "/adapter_model.safetensors"));
}

TEST(Trainer, AccumulationEqualsOneBigBatch) {
  // Without packing (padded rows) and dropout: 2 micro-batches of 2 rows per step train like 1 of 4 rows,
  // since each step's loss is normalised by its total target count.
  const std::string dir = testing::TempDir() + "qtune_trainer_accum";
  fs::remove_all(dir);
  TrainerArgs a = tiny_args(dir + "/big");
  a.packing = false;
  a.lora.lora_dropout = 0;
  a.eval_split = 0;
  a.max_steps = 3;
  a.per_device_train_batch_size = 4;
  a.gradient_accumulation_steps = 1;
  TrainResult big = run_finetune(a);
  TrainerArgs b = a;
  b.out_dir = dir + "/accum/out";
  b.per_device_train_batch_size = 2;
  b.gradient_accumulation_steps = 2;
  TrainResult acc = run_finetune(b);
  ASSERT_EQ(big.losses.size(), 3u);
  ASSERT_EQ(acc.losses.size(), 3u);
  for (size_t i = 0; i < 3; ++i)
    EXPECT_NEAR(acc.losses[i], big.losses[i], 1e-5 * big.losses[i]) << "step " << i + 1;
  EXPECT_NE(big.losses[0], big.losses[2]);
}

TEST(Trainer, BadArgumentsFailBeforeTraining) {
  const std::string dir = testing::TempDir() + "qtune_trainer_bad";
  fs::remove_all(dir);
  auto msg = [](TrainerArgs a) {
    try {
      run_finetune(a);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  TrainerArgs a = tiny_args(dir);
  a.lora.r = 0;
  EXPECT_NE(msg(a).find("r must be"), std::string::npos) << msg(a);
  a = tiny_args(dir);
  set_target_modules(a.lora, "nonexistent_proj");
  const std::string m = msg(a);
  EXPECT_NE(m.find("nonexistent_proj"), std::string::npos) << m;
  EXPECT_NE(m.find("q_proj"), std::string::npos) << m;  // lists the model's linear modules
  a = tiny_args(dir);
  a.optim = "sgd";
  EXPECT_NE(msg(a).find("--optim sgd"), std::string::npos);
  a = tiny_args(dir);
  a.resume = true;
  a.out_dir = dir + "/nothing";
  EXPECT_NE(msg(a).find("no checkpoint"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir + "/out/adapter_model.safetensors"));
}
