// Prompt tuning, P-tuning, prefix tuning and LLaMA-Adapter against PEFT (tools/make_vtok_fixtures.py):
// PEFT-made folders load and give PEFT's logits (real tokens) and greedy tokens; PEFT's TEXT init;
// qtune-written folders round-trip and equal the committed qtune_written_* fixtures (which the tool loads
// with PeftModel.from_pretrained); bad folders fail naming the file.
#include "peft/prompt_learning.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_util.h"
#include "io/safetensors.h"
#include "model/generate.h"
#include "peft/adaption_prompt.h"
#include "peft/prompt_adapter.h"
#include "peft_test_util.h"

using namespace qtune;
using namespace peft_test;
namespace fs = std::filesystem;

namespace {

std::vector<int32_t> ints(const Tensor& t) {
  std::vector<int32_t> v(t.numel());
  for (int64_t i = 0; i < t.numel(); i++) v[i] = t.data<int32_t>()[i];
  return v;
}

// Greedy tokens after row 0 of ids, as the fixture's PEFT generate ran (eos of the llama fixture).
std::vector<int32_t> greedy(const LlamaModel& m, const Tensor& ids, const VirtualTokens* vt, int n) {
  std::vector<int32_t> all = ints(ids);
  GenerateOptions opt;
  opt.max_new_tokens = n;
  opt.eos_token_ids = m.config().eos_token_ids;
  opt.virtual_tokens = vt;
  return generate(m, std::vector<int32_t>(all.begin(), all.begin() + ids.size(1)), opt).tokens;
}

// logits at the real tokens of ids with vt ahead (a fresh cache).
Tensor logits_with(const LlamaModel& m, const Tensor& ids, const VirtualTokens& vt) {
  KVCache cache = m.make_cache(ids.size(0), vt.count() + ids.size(1));
  return forward_with_virtual_tokens(m, ids, cache, vt);
}

}  // namespace

TEST(PromptLearning, PeftMadeFoldersGivePeftLogitsAndGreedy) {
  for (const char* name : {"prompt_tuning", "prompt_text", "p_tuning", "prefix", "prefix_proj"}) {
    LlamaModel m = LlamaModel::load(kModels + "llama");
    PromptLearningModel pl = PromptLearningModel::load(m, kFix + name);
    auto exp = SafetensorsFile::open(kFix + name + "/expected.safetensors");
    Tensor ids = exp->get("ids");
    VirtualTokens vt = pl.virtual_tokens();
    double e = rel_err(logits_with(m, ids, vt), exp->get("logits"));
    std::printf("%s: logits vs PEFT rel err %.2e\n", name, e);
    EXPECT_LE(e, 2e-6) << name;
    Tensor want = exp->get("greedy");
    EXPECT_EQ(greedy(m, ids, &vt, (int)want.numel()), ints(want)) << name;
  }
}

TEST(PromptLearning, AdaptionPromptGivesPeftLogitsAndGreedy) {
  LlamaModel m = LlamaModel::load(kModels + "llama");
  Tensor base = m.forward(SafetensorsFile::open(kFix + "adaption/expected.safetensors")->get("ids"));
  AdaptionPromptModel ap = AdaptionPromptModel::load(m, kFix + "adaption");
  auto exp = SafetensorsFile::open(kFix + "adaption/expected.safetensors");
  Tensor ids = exp->get("ids");
  double e = rel_err(m.forward(ids), exp->get("logits"));
  std::printf("adaption: logits vs PEFT rel err %.2e\n", e);
  EXPECT_LE(e, 2e-6);
  EXPECT_EQ(greedy(m, ids, nullptr, (int)exp->get("greedy").numel()), ints(exp->get("greedy")));
  ap.detach();  // the base model again
  EXPECT_EQ(rel_err(m.forward(ids), base), 0.0);
}

TEST(PromptLearning, TextInitRepeatsTheTokensAsPeft) {
  LlamaModel m = LlamaModel::load(kModels + "llama");
  auto exp = SafetensorsFile::open(kFix + "prompt_text/expected.safetensors");
  PromptLearningConfig cfg;
  cfg.num_virtual_tokens = 7;
  cfg.prompt_tuning_init = "TEXT";
  cfg.prompt_tuning_init_text = "the cat";
  PromptLearningModel pl = PromptLearningModel::create(m, cfg, 0, ints(exp->get("init_ids")));
  PromptLearningModel peft = PromptLearningModel::load(m, kFix + "prompt_text");
  EXPECT_EQ(rel_err(pl.prompt_embeddings(), peft.prompt_embeddings()), 0.0);
}

TEST(PromptLearning, GenerateCountsVirtualTokensAgainstTheContext) {
  LlamaModel m = LlamaModel::load(kModels + "llama");  // max_position_embeddings 512
  PromptLearningConfig cfg;
  cfg.peft_type = PromptLearningType::PrefixTuning;
  cfg.num_virtual_tokens = 500;
  PromptLearningModel pl = PromptLearningModel::create(m, cfg, 1);
  VirtualTokens vt = pl.virtual_tokens();
  GenerateOptions opt;
  opt.max_new_tokens = 50;
  opt.virtual_tokens = &vt;
  GenerateResult r = generate(m, std::vector<int32_t>(8, 5), opt);
  EXPECT_EQ(r.stop, StopReason::ContextFull);
  EXPECT_EQ((int)r.tokens.size(), 512 - 500 - 8);
  std::string msg = error_of([&] { generate(m, std::vector<int32_t>(20, 5), opt); });
  EXPECT_NE(msg.find("500 virtual tokens"), std::string::npos) << msg;
  cfg.num_virtual_tokens = 512;
  msg = error_of([&] { PromptLearningModel::create(m, cfg, 1); });
  EXPECT_NE(msg.find("leave no room"), std::string::npos) << msg;
}

// Fresh qtune adapters (seeded, non-trivial) → tests/fixtures/peft/qtune_written_*: bit-identical to the
// committed folders, which tools/make_vtok_fixtures.py --check-qtune loads with PEFT; qtune reads them back.
TEST(PromptLearning, QtuneWrittenFixtures) {
  const bool regen = std::getenv("QTUNE_REGEN_PEFT") != nullptr;
  Tensor ids = Tensor::from_i32({1, 5, 17, 42, 99, 3, 250, 7, 1, 200, 31, 8, 8, 150, 77, 2}, {2, 8});
  for (const char* name :
       {"qtune_written_prompt", "qtune_written_ptuning", "qtune_written_prefix", "qtune_written_adaption"}) {
    const std::string n = name;
    LlamaModel m = LlamaModel::load(kModels + "llama");
    const std::string dir = regen ? kFix + n : testing::TempDir() + "/" + n;
    if (!regen) fs::remove_all(dir);
    Tensor logits;
    std::vector<int32_t> tokens;
    if (n == "qtune_written_adaption") {
      AdaptionPromptConfig cfg;
      cfg.adapter_len = 3;
      cfg.adapter_layers = 2;
      cfg.base_model_name_or_path = "tests/fixtures/model/llama";
      AdaptionPromptModel ap = AdaptionPromptModel::create(m, cfg, 7);
      for (size_t i = 0; i < ap.layers().size(); i++) ap.layers()[i].gate.data<float>()[0] = 0.6f + 0.3f * i;
      ap.refresh();
      logits = m.forward(ids);
      tokens = greedy(m, ids, nullptr, 10);
      ap.save(dir);
    } else {
      PromptLearningConfig cfg;
      cfg.base_model_name_or_path = "tests/fixtures/model/llama";
      cfg.num_virtual_tokens = 4;
      if (n == "qtune_written_ptuning") {
        cfg.peft_type = PromptLearningType::PTuning;
        cfg.encoder_hidden_size = 16;
      } else if (n == "qtune_written_prefix") {
        cfg.peft_type = PromptLearningType::PrefixTuning;
        cfg.num_virtual_tokens = 5;
      }
      PromptLearningModel pl = PromptLearningModel::create(m, cfg, 3);
      VirtualTokens vt = pl.virtual_tokens();
      logits = logits_with(m, ids, vt);
      tokens = greedy(m, ids, &vt, 10);
      pl.save(dir);
    }
    write_safetensors(
        dir + "/qtune_logits.safetensors",
        {{"ids", ids}, {"logits", logits}, {"greedy", Tensor::from_i32(tokens, {(int64_t)tokens.size()})}});
    if (regen) continue;
    for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "qtune_logits.safetensors"})
      EXPECT_TRUE(read_file(dir + "/" + f) == read_file(kFix + n + "/" + f))
          << n << "/" << f << " differs from the committed fixture (QTUNE_REGEN_PEFT=1 rewrites it)";
    LlamaModel fresh = LlamaModel::load(kModels + "llama");  // qtune reads its own folder back
    std::unique_ptr<PromptAdapter> back = load_prompt_adapter(fresh, kFix + n);
    Tensor again =
        back->virtual_tokens() ? logits_with(fresh, ids, *back->virtual_tokens()) : fresh.forward(ids);
    EXPECT_LE(rel_err(again, logits), 1e-6) << n;
  }
}

TEST(PromptLearning, ReadErrorsNameTheFile) {
  LlamaModel m = LlamaModel::load(kModels + "llama");
  // Unknown peft_type.
  std::string d = copy_fixture("prefix", "ptype");
  edit_config(d, [](nlohmann::json& j) { j["peft_type"] = "SOFT_PROMPT"; });
  std::string msg = error_of([&] { load_prompt_adapter(m, d); });
  EXPECT_NE(msg.find("adapter_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("SOFT_PROMPT"), std::string::npos) << msg;
  // Config vs tensor shapes: num_virtual_tokens says 7, the tensor has 6 rows.
  d = copy_fixture("prefix", "shape");
  edit_config(d, [](nlohmann::json& j) { j["num_virtual_tokens"] = 7; });
  msg = error_of([&] { load_prompt_adapter(m, d); });
  EXPECT_NE(msg.find("adapter_model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[7, 128]"), std::string::npos) << msg;
  // Virtual tokens beyond the context length.
  d = copy_fixture("prompt_tuning", "ctx");
  edit_config(d, [](nlohmann::json& j) { j["num_virtual_tokens"] = 600; });
  msg = error_of([&] { load_prompt_adapter(m, d); });
  EXPECT_NE(msg.find("adapter_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("max_position_embeddings 512"), std::string::npos) << msg;
  // An adapter made for another base (hidden size 128).
  d = copy_fixture("prompt_tuning", "hidden");
  edit_config(d, [](nlohmann::json& j) { j["token_dim"] = 128; });
  msg = error_of([&] { load_prompt_adapter(m, d); });
  EXPECT_NE(msg.find("adapter_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hidden size is 64"), std::string::npos) << msg;
  d = copy_fixture("prefix", "kv");
  edit_config(d, [](nlohmann::json& j) { j["token_dim"] = 64; });
  msg = error_of([&] { load_prompt_adapter(m, d); });
  EXPECT_NE(msg.find("another base"), std::string::npos) << msg;
  // LLaMA-Adapter: prompts for another hidden size; more layers than the model has.
  d = copy_fixture("adaption", "aplen");
  edit_config(d, [](nlohmann::json& j) { j["adapter_len"] = 5; });
  msg = error_of([&] { load_prompt_adapter(m, d); });
  EXPECT_NE(msg.find("adapter_model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[1, 5, 64]"), std::string::npos) << msg;
  d = copy_fixture("adaption", "aplayers");
  edit_config(d, [](nlohmann::json& j) { j["adapter_layers"] = 3; });
  msg = error_of([&] { load_prompt_adapter(m, d); });
  EXPECT_NE(msg.find("adapter_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("exceeds the model's 2 layers"), std::string::npos) << msg;
  // An extra tensor.
  d = copy_fixture("prompt_tuning", "extra");
  {
    auto f = SafetensorsFile::open(d + "/adapter_model.safetensors");
    Tensor t = f->get("prompt_embeddings").clone();
    write_safetensors(d + "/adapter_model.safetensors", {{"prompt_embeddings", t}, {"stray", t}});
  }
  msg = error_of([&] { load_prompt_adapter(m, d); });
  EXPECT_NE(msg.find("unexpected tensor 'stray'"), std::string::npos) << msg;
}
