// run_finetune with every PEFT method (train/peft_session.h) on the bundled model: each trains with the loss
// falling and writes a folder that loads back by its peft_type with the logits of the trained in-memory
// model; an interrupted IA3 / prompt tuning / P-tuning / prefix-projection / LLaMA-Adapter run resumed from
// its checkpoint continues bit for bit; bad method settings fail before training, naming the flag.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "loss_parity.h"
#include "model/llama_model.h"
#include "model/virtual_tokens.h"
#include "peft/peft_adapter.h"
#include "peft/prompt_adapter.h"
#include "train/peft_session.h"
#include "train/trainer.h"
#include "train_test_util.h"

using namespace qtune;
using qtune_test::expect_error;
using qtune_test::rel_err;
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

// Small settings per method; no packing (the prompt types refuse it), so every method sees the same rows.
TrainerArgs method_args(const std::string& dir, const std::string& type) {
  TrainerArgs a;
  a.device = "cpu";
  a.model_dir = kBundled;
  a.data_path = tiny_data(dir, 24);
  a.out_dir = dir + "/out";
  a.peft_type = type;
  a.lora.r = 4;
  a.lora.lora_alpha = 8;
  set_target_modules(a.lora, "q_proj,v_proj,down_proj");
  a.bottleneck.bottleneck_size = 8;
  a.prompt.num_virtual_tokens = 6;
  a.prompt.encoder_hidden_size = 32;
  a.adaption.adapter_len = 4;
  a.adaption.adapter_layers = 3;
  // LLaMA-Adapter: its gates start at zero and move about lr per step.
  a.learning_rate = type == "lora" || type == "bottleneck" ? 3e-3 : type == "adaption_prompt" ? 1e-1 : 3e-2;
  a.max_steps = 6;
  a.per_device_train_batch_size = 2;
  a.gradient_accumulation_steps = 2;
  a.max_seq_length = 64;
  a.quiet = true;
  return a;
}

// Logits of a fixed prompt with the folder dir loaded on a fresh base (by its peft_type).
std::vector<float> folder_logits(const std::string& dir, const Tensor& ids) {
  LlamaModel model = LlamaModel::load(kBundled, Device::CPU);
  if (is_prompt_adapter_folder(dir)) {
    std::unique_ptr<PromptAdapter> a = load_prompt_adapter(model, dir);
    if (!a->virtual_tokens()) return model.forward(ids).to_f32_vector();  // LLaMA-Adapter: in the layers
    KVCache cache = model.make_cache(1, a->virtual_tokens()->count() + ids.size(1));
    return forward_with_virtual_tokens(model, ids, cache, *a->virtual_tokens()).to_f32_vector();
  }
  std::unique_ptr<PeftAdapter> a = load_peft_adapter(model, dir);
  return model.forward(ids).to_f32_vector();
}

const Tensor& probe_ids() {
  static const Tensor ids = Tensor::from_i32({0, 417, 33, 1203, 99, 5, 42, 8}, {1, 8});
  return ids;
}

struct Trained {
  TrainResult result;
  std::vector<float> memory_logits;  // of probe_ids() with the adapter in memory at the end of the run
};

Trained train(TrainerArgs a) {
  Trained t;
  a.on_trained = [&t](const LlamaModel& m, const PeftSession& s) {
    t.memory_logits = s.logits(m, probe_ids()).to_f32_vector();
  };
  t.result = run_finetune(a);
  return t;
}

}  // namespace

TEST(PeftTrainer, EveryMethodTrainsAndItsFolderLoadsBack) {
  const std::string root = testing::TempDir() + "qtune_peft_trainer";
  fs::remove_all(root);
  LlamaModel base = LlamaModel::load(kBundled, Device::CPU);
  const std::vector<float> base_logits = base.forward(probe_ids()).to_f32_vector();
  struct Case {
    std::string type;
    bool dora = false, prefix_projection = false;
    const char* peft_type;
  };
  for (const Case& c :
       {Case{"lora", false, false, "LORA"}, Case{"lora", true, false, "LORA"},
        Case{"ia3", false, false, "IA3"}, Case{"bottleneck", false, false, "BOTTLENECK"},
        Case{"prompt_tuning", false, false, "PROMPT_TUNING"}, Case{"p_tuning", false, false, "P_TUNING"},
        Case{"prefix_tuning", false, false, "PREFIX_TUNING"},
        Case{"prefix_tuning", false, true, "PREFIX_TUNING"},
        Case{"adaption_prompt", false, false, "ADAPTION_PROMPT"}}) {
    const std::string name = c.type + (c.dora ? "_dora" : "") + (c.prefix_projection ? "_proj" : "");
    SCOPED_TRACE(name);
    TrainerArgs a = method_args(root + "/" + name, c.type);
    a.lora.use_dora = c.dora;
    a.prompt.prefix_projection = c.prefix_projection;
    a.eval_split = 0.2;  // the same held-out rows after every step: the eval loss falls
    a.eval_steps = 1;
    Trained t = train(a);
    ASSERT_EQ(t.result.losses.size(), 6u);
    ASSERT_EQ(t.result.eval_losses.size(), 6u);
    EXPECT_LT(t.result.eval_losses.back(), t.result.eval_losses.front() - 0.05);
    std::printf("%-20s eval loss after step 1 %.4f, after step 6 %.4f\n", name.c_str(),
                t.result.eval_losses.front(), t.result.eval_losses.back());
    EXPECT_EQ(read_peft_type(a.out_dir), c.peft_type);
    EXPECT_FALSE(fs::exists(a.out_dir + "/peft_state.safetensors"));  // the folder is PEFT's alone
    const std::vector<float> loaded = folder_logits(a.out_dir, probe_ids());
    EXPECT_LT(rel_err(loaded, t.memory_logits), 1e-6);
    EXPECT_GT(rel_err(t.memory_logits, base_logits), 1e-4);  // the adapter changed the function
  }
}

TEST(PeftTrainer, ResumeIsBitIdentical) {
  const std::string root = testing::TempDir() + "qtune_peft_resume";
  fs::remove_all(root);
  struct Case {
    std::string type;
    bool text_init = false, prefix_projection = false;
  };
  for (const Case& c : {Case{"ia3"}, Case{"prompt_tuning", true}, Case{"p_tuning"},
                        Case{"prefix_tuning", false, true}, Case{"adaption_prompt"}}) {
    SCOPED_TRACE(c.type);
    auto args = [&](const std::string& dir) {
      TrainerArgs a = method_args(root + "/" + c.type + dir, c.type);
      if (c.text_init) {
        a.prompt.prompt_tuning_init = "TEXT";
        a.prompt.prompt_tuning_init_text = "Answer the question.";
      }
      a.prompt.prefix_projection = c.prefix_projection;
      a.save_steps = 2;
      a.eval_split = 0.2;
      a.eval_steps = 3;
      return a;
    };
    TrainerArgs a = args("/straight");
    TrainResult straight = run_finetune(a);
    ASSERT_EQ(straight.losses.size(), 6u);
    ASSERT_EQ(straight.eval_losses.size(), 2u);
    if (c.type != "ia3" && c.type != "adaption_prompt")  // their folders hold every trained tensor
      EXPECT_TRUE(fs::exists(a.out_dir + "/checkpoint-2/peft_state.safetensors"));
    TrainerArgs b = args("/resumed");
    b.stop_after_steps = 3;  // "killed" after step 3: checkpoint-2 is the newest
    EXPECT_TRUE(run_finetune(b).stopped_early);
    b.stop_after_steps = -1;
    b.resume = true;
    TrainResult rest = run_finetune(b);
    ASSERT_EQ(rest.losses.size(), 6u);
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(rest.losses[i], straight.losses[i]) << "step " << i + 1;
    ASSERT_EQ(rest.eval_losses.size(), 2u);  // steps 3 (again) and 6
    EXPECT_EQ(rest.eval_losses, straight.eval_losses);
    EXPECT_EQ(read_all(a.out_dir + "/adapter_model.safetensors"),
              read_all(b.out_dir + "/adapter_model.safetensors"));
  }
}

TEST(PeftTrainer, ContinuesAPromptTuningFolder) {
  const std::string root = testing::TempDir() + "qtune_peft_continue";
  fs::remove_all(root);
  TrainerArgs a = method_args(root, "p_tuning");
  TrainResult first = run_finetune(a);
  TrainerArgs b = a;
  b.peft_type.clear();  // the folder's type
  b.adapter_dir = a.out_dir;
  b.out_dir = root + "/continued";
  b.max_steps = 2;
  b.save_steps = 1;
  TrainResult more = run_finetune(b);
  EXPECT_LT(more.losses.front(), first.losses.front());  // starts from the trained virtual tokens
  EXPECT_EQ(read_peft_type(b.out_dir), "P_TUNING");
  // A checkpoint of a continued run resumes as it trained (the folder's embeddings, no encoder).
  b.resume = true;
  b.max_steps = 3;
  EXPECT_EQ(run_finetune(b).losses.size(), 3u);
}

TEST(PeftTrainer, BadMethodSettingsFailBeforeTraining) {
  const std::string root = testing::TempDir() + "qtune_peft_bad";
  fs::remove_all(root);
  auto args = [&](const std::string& type) { return method_args(root, type); };
  TrainerArgs a = args("prompt_tuning");
  a.packing = true;
  expect_error([&] { run_finetune(a); }, ErrorKind::Usage,
               {"--packing", "prompt_tuning", "per-example virtual tokens"});
  a = args("adalora");
  expect_error([&] { run_finetune(a); }, ErrorKind::Usage, {"--peft-type 'adalora'", "prefix_tuning"});
  a = args("prompt_tuning");
  a.prompt.prompt_tuning_init = "TEXT";
  expect_error([&] { run_finetune(a); }, ErrorKind::Usage, {"--prompt-tuning-init-text"});
  a = args("prompt_tuning");
  a.prompt.prompt_tuning_init_text = "hello";
  expect_error([&] { run_finetune(a); }, ErrorKind::Usage, {"only with --prompt-tuning-init text"});
  a = args("p_tuning");
  a.prompt.prefix_projection = true;
  expect_error([&] { run_finetune(a); }, ErrorKind::Usage, {"--prefix-projection", "p_tuning"});
  a = args("prefix_tuning");
  a.prompt.num_virtual_tokens = 0;
  expect_error([&] { run_finetune(a); }, ErrorKind::Usage, {"--num-virtual-tokens must be > 0"});
  a = args("prefix_tuning");
  a.prompt.num_virtual_tokens = 500;  // + the examples' ~20 tokens > the 512 positions
  expect_error([&] { run_finetune(a); }, ErrorKind::Usage,
               {"500 virtual tokens", "max_position_embeddings 512"});
  a = args("bottleneck");
  a.bottleneck.bottleneck_size = 0;
  expect_error([&] { run_finetune(a); }, ErrorKind::Config, {"bottleneck_size"});
  a = args("ia3");
  a.adapter_dir = std::string(QTUNE_FIXTURES) + "/train/loss_parity/adapter_init";  // a LoRA folder
  expect_error([&] { run_finetune(a); }, ErrorKind::Usage, {"--peft-type ia3", "holds a LORA adapter"});
  EXPECT_FALSE(fs::exists(root + "/out/adapter_model.safetensors"));
  // Resuming another method's checkpoint.
  a = args("ia3");
  a.save_steps = 1;
  a.stop_after_steps = 1;
  run_finetune(a);
  a = args("prompt_tuning");
  a.resume = true;
  expect_error([&] { run_finetune(a); }, ErrorKind::Usage, {"checkpoint-1", "holds a IA3 adapter"});
}
