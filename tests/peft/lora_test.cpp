// LoRA / DoRA adapters against PEFT: folders PEFT wrote (tools/make_peft_fixtures.py) load and reproduce
// PEFT's logits; qtune-written folders round-trip, and the committed qtune_written* folders (which the tool
// checks with PeftModel.from_pretrained) are regenerated bit-identically; PEFT's init; errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "io/json_util.h"
#include "io/safetensors.h"
#include "peft/lora_model.h"
#include "peft_test_util.h"

using namespace qtune;
using namespace peft_test;
namespace fs = std::filesystem;

namespace {

// Random B (PEFT's init has B = 0, which would make every adapter a no-op).
void randomize_b(LoraModel& lm, uint64_t seed) {
  std::mt19937 rng((uint32_t)seed);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  for (const auto& l : lm.layers()) {
    float* b = l->B.data<float>();
    for (int64_t i = 0; i < l->B.numel(); ++i) b[i] = nd(rng);
  }
  lm.refresh();
}

}  // namespace

class PeftFixture : public testing::TestWithParam<const char*> {};

TEST_P(PeftFixture, LogitsMatchPeft) {
  const std::string dir = kFix + GetParam();
  auto exp = SafetensorsFile::open(dir + "/expected.safetensors");
  LoraConfig cfg = read_lora_config(dir + "/adapter_config.json");
  LlamaModel model = LlamaModel::load(std::string(QTUNE_SOURCE_DIR) + "/" + cfg.base_model_name_or_path);
  Tensor ids = exp->get("ids").clone();
  double base_err = rel_err(model.forward(ids), exp->get("base_logits"));
  LoraModel lora = LoraModel::load(model, dir);
  double err = rel_err(model.forward(ids), exp->get("logits"));
  std::printf("%-11s targets %zu, logits rel err vs PEFT %.2e (base model %.2e)\n", GetParam(),
              lora.targets().size(), err, base_err);
  EXPECT_LE(err, 1e-4);
  EXPECT_GT(rel_err(exp->get("logits"), exp->get("base_logits")), 0.1);  // the adapter matters
  lora.detach();
  EXPECT_LE(rel_err(model.forward(ids), exp->get("base_logits")), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Peft, PeftFixture,
                         testing::Values("lora_qv", "rslora_all", "bias_mts", "dora_qv", "qlora_nf4"));

TEST_P(PeftFixture, MergeKeepsLogits) {
  const std::string dir = kFix + GetParam();
  auto exp = SafetensorsFile::open(dir + "/expected.safetensors");
  LoraConfig cfg = read_lora_config(dir + "/adapter_config.json");
  LlamaModel model = LlamaModel::load(std::string(QTUNE_SOURCE_DIR) + "/" + cfg.base_model_name_or_path);
  LoraModel lora = LoraModel::load(model, dir);
  Tensor ids = exp->get("ids").clone();
  if (cfg.base_model_name_or_path.find("quant_model") != std::string::npos) {  // NF4 base
    std::string msg = error_of([&] { lora.merge(); });
    EXPECT_NE(msg.find("not a dense CPU weight"), std::string::npos) << msg;
    return;
  }
  lora.merge();
  for (auto& [name, lin] : linear_modules(model)) EXPECT_FALSE(lin->adapter) << name;
  double err = rel_err(model.forward(ids), exp->get("logits"));
  std::printf("%-11s merged logits rel err vs PEFT %.2e\n", GetParam(), err);
  EXPECT_LE(err, 1e-4);
}

TEST(LoraConfig, ReadsPeftFields) {
  LoraConfig c = read_lora_config(kFix + "rslora_all/adapter_config.json");
  EXPECT_EQ(c.r, 8);
  EXPECT_EQ(c.lora_alpha, 16);
  EXPECT_TRUE(c.use_rslora);
  EXPECT_NEAR(c.scale_for("x"), 16 / std::sqrt(8.0), 1e-12);
  EXPECT_EQ(c.target_modules.size(), 14u);  // PEFT expands all-linear into module names
  LoraConfig b = read_lora_config(kFix + "bias_mts/adapter_config.json");
  EXPECT_EQ(b.bias, LoraBias::All);
  ASSERT_EQ(b.modules_to_save.size(), 1u);
  EXPECT_EQ(b.modules_to_save[0], "lm_head");
  EXPECT_TRUE(read_lora_config(kFix + "dora_qv/adapter_config.json").use_dora);
}

TEST(LoraConfig, TargetMatching) {
  std::vector<std::string> names = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                    "model.layers.0.mlp.down_proj", "lm_head"};
  LoraConfig c;
  set_target_modules(c, "q_proj, down_proj");
  EXPECT_EQ(resolve_lora_targets(c, names).size(), 2u);
  set_target_modules(c, "all-linear");
  EXPECT_EQ(resolve_lora_targets(c, names).size(), 3u);  // not lm_head
  c.modules_to_save = {"down_proj"};
  EXPECT_EQ(resolve_lora_targets(c, names).size(), 2u);
  c = LoraConfig();
  c.target_regex = ".*self_attn\\.(q|v)_proj";
  EXPECT_EQ(resolve_lora_targets(c, names).size(), 2u);
  set_target_modules(c, "proj");  // suffixes match whole name parts only
  std::string msg = error_of([&] { resolve_lora_targets(c, names); });
  EXPECT_NE(msg.find("match none of the model's linear modules"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.layers.0.mlp.down_proj"), std::string::npos) << msg;
}

TEST(LoraModel, CreateUsesPeftInitAndNoOpAtStart) {
  LlamaModel model = LlamaModel::load(kModels + "llama");
  Tensor ids = Tensor::from_i32({1, 5, 9, 200, 31}, {1, 5});
  Tensor base = model.forward(ids);
  LoraConfig cfg;
  cfg.r = 16;
  cfg.lora_alpha = 32;
  set_target_modules(cfg, "all-linear");
  LoraModel lm = LoraModel::create(model, cfg, 123);
  EXPECT_EQ(lm.targets().size(), 14u);
  EXPECT_EQ(rel_err(model.forward(ids), base), 0.0);  // B = 0
  // A ~ U(-1/sqrt(in), 1/sqrt(in)): the max is near the bound and the std near bound/sqrt(3).
  for (const auto& l : lm.layers()) {
    const double bound = 1.0 / std::sqrt((double)l->A.size(1));
    std::vector<float> a = l->A.to_f32_vector();
    double mx = 0, sq = 0;
    for (float v : a) mx = std::max(mx, (double)std::fabs(v)), sq += (double)v * v;
    EXPECT_LE(mx, bound) << l->module;
    EXPECT_GT(mx, 0.9 * bound) << l->module;
    EXPECT_NEAR(std::sqrt(sq / a.size()), bound / std::sqrt(3.0), 0.1 * bound) << l->module;
    for (float v : l->B.to_f32_vector()) ASSERT_EQ(v, 0.0f);
    EXPECT_EQ(l->scale, 2.0);
  }
  // Seeded: the same seed gives the same A, another seed another A.
  LlamaModel m2 = LlamaModel::load(kModels + "llama");
  LoraModel same = LoraModel::create(m2, cfg, 123);
  EXPECT_EQ(rel_err(same.layers()[3]->A, lm.layers()[3]->A), 0.0);
  LoraModel other = LoraModel::create(m2, cfg, 124);
  EXPECT_GT(rel_err(other.layers()[3]->A, lm.layers()[3]->A), 0.5);
  // After training-like changes of B the output moves; trainable() exposes A and B under PEFT's keys.
  randomize_b(lm, 5);
  EXPECT_GT(rel_err(model.forward(ids), base), 0.01);
  auto tr = lm.trainable();
  ASSERT_EQ(tr.size(), 28u);
  EXPECT_EQ(tr[0].name, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(tr[1].name, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
}

TEST(LoraModel, SaveLoadRoundTrip) {
  LlamaModel model = LlamaModel::load(kModels + "llama_bias");
  Tensor ids = Tensor::from_i32({1, 5, 9, 200, 31, 7}, {2, 3});
  LoraConfig cfg;
  cfg.r = 3;
  cfg.lora_alpha = 5;
  cfg.use_rslora = true;
  cfg.bias = LoraBias::LoraOnly;
  cfg.modules_to_save = {"lm_head"};
  set_target_modules(cfg, "q_proj,up_proj");
  LoraModel lm = LoraModel::create(model, cfg, 1);
  randomize_b(lm, 2);
  for (const NamedTensor& t : lm.trainable())  // move the trained biases / head copy too
    if (t.name.find("lora_") == std::string::npos) t.tensor.data<float>()[0] += 0.5f;
  lm.refresh();
  Tensor want = model.forward(ids);
  const std::string dir = testing::TempDir() + "/peft_roundtrip";
  fs::remove_all(dir);
  lm.save(dir);
  nlohmann::json j = nlohmann::json::parse(read_file(dir + "/adapter_config.json"));
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["task_type"], "CAUSAL_LM");
  EXPECT_EQ(j["r"], 3);
  EXPECT_EQ(j["lora_alpha"], 5);
  EXPECT_EQ(j["bias"], "lora_only");
  EXPECT_EQ(j["use_rslora"], true);
  EXPECT_EQ(j["target_modules"], nlohmann::json({"q_proj", "up_proj"}));
  EXPECT_EQ(j["modules_to_save"], nlohmann::json({"lm_head"}));
  EXPECT_TRUE(j.contains("base_model_name_or_path"));
  auto st = SafetensorsFile::open(dir + "/adapter_model.safetensors");
  EXPECT_TRUE(st->has("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"));
  EXPECT_TRUE(st->has("base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias"));
  EXPECT_TRUE(st->has("base_model.model.lm_head.weight"));
  EXPECT_FALSE(st->has("base_model.model.model.layers.0.self_attn.k_proj.bias"));  // lora_only
  LlamaModel fresh = LlamaModel::load(kModels + "llama_bias");
  LoraModel back = LoraModel::load(fresh, dir);
  EXPECT_EQ(rel_err(fresh.forward(ids), want), 0.0);
}

// The committed qtune-written folders: this test regenerates them (QTUNE_REGEN_PEFT=1 writes them into
// the source tree) and checks the files are byte-identical to the committed ones, so that the PEFT-side
// check in tools/make_peft_fixtures.py --check-qtune stays reproducible.
TEST(LoraModel, QtuneWrittenFixtures) {
  struct Case {
    const char* name;
    const char* base;
    const char* targets;
    bool dora, rslora;
    LoraBias bias;
    bool save_head;
  };
  const Case cases[] = {
      {"qtune_written", "llama", "all-linear", false, true, LoraBias::None, false},
      {"qtune_written_dora", "llama", "q_proj,v_proj,down_proj", true, false, LoraBias::None, false},
      {"qtune_written_bias", "llama_bias", "q_proj,o_proj,up_proj", false, false, LoraBias::All, true}};
  for (size_t ci = 0; ci < 3; ++ci) {
    const Case& c = cases[ci];
    const std::string name = c.name;
    LlamaModel model = LlamaModel::load(kModels + c.base);
    LoraConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.use_dora = c.dora;
    cfg.use_rslora = c.rslora;
    cfg.bias = c.bias;
    if (c.save_head) cfg.modules_to_save = {"lm_head"};
    cfg.base_model_name_or_path = std::string("tests/fixtures/model/") + c.base;
    set_target_modules(cfg, c.targets);
    LoraModel lm = LoraModel::create(model, cfg, 10 + ci);
    randomize_b(lm, 20 + ci);
    for (const NamedTensor& t : lm.trainable()) {  // move magnitudes, biases and the head copy too
      if (t.name.find("lora_A") != std::string::npos || t.name.find("lora_B") != std::string::npos) continue;
      float* v = t.tensor.data<float>();
      for (int64_t i = 0; i < t.tensor.numel(); ++i) v[i] *= 1.0f + 0.01f * (i % 7);
    }
    lm.refresh();
    Tensor ids = Tensor::from_i32({1, 5, 17, 42, 99, 3, 250, 7, 1, 200, 31, 8, 8, 150, 77, 2}, {2, 8});
    Tensor logits = model.forward(ids);
    const bool regen = std::getenv("QTUNE_REGEN_PEFT") != nullptr;
    const std::string dir = regen ? kFix + name : testing::TempDir() + "/" + name;
    if (!regen) fs::remove_all(dir);
    lm.save(dir);
    write_safetensors(dir + "/qtune_logits.safetensors", {{"ids", ids}, {"logits", logits}});
    if (regen) continue;
    for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "qtune_logits.safetensors"})
      EXPECT_TRUE(read_file(dir + "/" + f) == read_file(kFix + name + "/" + f))
          << name << "/" << f << " differs from the committed fixture (QTUNE_REGEN_PEFT=1 rewrites it)";
    // And qtune reads its own folder back to the same logits.
    LlamaModel fresh = LlamaModel::load(kModels + c.base);
    LoraModel back = LoraModel::load(fresh, kFix + name);
    EXPECT_LE(rel_err(fresh.forward(ids), logits), 1e-6) << name;
  }
}

TEST(LoraModel, ReadErrorsNameTheFile) {
  LlamaModel model = LlamaModel::load(kModels + "llama");
  // Unknown peft_type.
  std::string d = copy_fixture("lora_qv", "ptype");
  edit_config(d, [](nlohmann::json& j) { j["peft_type"] = "IA3"; });
  std::string msg = error_of([&] { LoraModel::load(model, d); });
  EXPECT_NE(msg.find("adapter_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("peft_type 'IA3'"), std::string::npos) << msg;
  // Config r does not match the tensors.
  d = copy_fixture("lora_qv", "rank");
  edit_config(d, [](nlohmann::json& j) { j["r"] = 8; });
  msg = error_of([&] { LoraModel::load(model, d); });
  EXPECT_NE(msg.find("adapter_model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lora_A.weight' has shape [4, 64], expected [8, 64]"), std::string::npos) << msg;
  // An adapter for a base with another hidden size (llama: 64, llama_bias: 32).
  LlamaModel small = LlamaModel::load(kModels + "llama_bias");
  msg = error_of([&] { LoraModel::load(small, kFix + "lora_qv"); });
  EXPECT_NE(msg.find("adapter_model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hidden size 32"), std::string::npos) << msg;
  // Targets that match nothing in this model.
  d = copy_fixture("lora_qv", "targets");
  edit_config(d, [](nlohmann::json& j) { j["target_modules"] = {"c_attn"}; });
  msg = error_of([&] { LoraModel::load(model, d); });
  EXPECT_NE(msg.find("adapter_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[c_attn] match none"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.layers.1.mlp.down_proj"), std::string::npos) << msg;
  // Tensors the config does not explain.
  d = copy_fixture("lora_qv", "extra");
  edit_config(d, [](nlohmann::json& j) { j["target_modules"] = {"q_proj"}; });
  msg = error_of([&] { LoraModel::load(model, d); });
  EXPECT_NE(msg.find("match nothing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("v_proj.lora_A.weight"), std::string::npos) << msg;
  // Wrong field types name the field.
  d = copy_fixture("lora_qv", "types");
  edit_config(d, [](nlohmann::json& j) { j["modules_to_save"] = {"lm_head", 3}; });
  msg = error_of([&] { LoraModel::load(model, d); });
  EXPECT_NE(msg.find("field 'modules_to_save' must be a list of strings, got 3"), std::string::npos) << msg;
  edit_config(d, [](nlohmann::json& j) {
    j["modules_to_save"] = nullptr;
    j["layers_to_transform"] = {0};
  });
  msg = error_of([&] { LoraModel::load(model, d); });
  EXPECT_NE(msg.find("'layers_to_transform'"), std::string::npos) << msg;
  // Missing files.
  msg = error_of([&] { LoraModel::load(model, testing::TempDir() + "/no_such_adapter"); });
  EXPECT_NE(msg.find("no_such_adapter"), std::string::npos) << msg;
  d = copy_fixture("lora_qv", "nofile");
  fs::remove(d + "/adapter_model.safetensors");
  msg = error_of([&] { LoraModel::load(model, d); });
  EXPECT_NE(msg.find("no adapter_model.safetensors"), std::string::npos) << msg;
  // Malformed JSON names the file and line.
  d = copy_fixture("lora_qv", "json");
  std::ofstream(d + "/adapter_config.json") << "{\n \"r\": 4,\n oops }";
  msg = error_of([&] { LoraModel::load(model, d); });
  EXPECT_NE(msg.find("adapter_config.json"), std::string::npos) << msg;
}

TEST(LoraModel, RankAndAlphaPatterns) {
  // PEFT's rank_pattern / alpha_pattern: per-module r and alpha, read back from the saved config.
  LlamaModel model = LlamaModel::load(kModels + "llama");
  LoraConfig cfg;
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.rank_pattern = {{"v_proj", 2}};
  cfg.alpha_pattern = {{"layers\\.1\\.self_attn\\.q_proj", 3}};
  set_target_modules(cfg, "q_proj,v_proj");
  LoraModel lm = LoraModel::create(model, cfg, 0);
  randomize_b(lm, 1);
  for (const auto& l : lm.layers()) {
    const bool v = l->module.find("v_proj") != std::string::npos;
    EXPECT_EQ(l->r, v ? 2 : 4) << l->module;
    EXPECT_EQ(l->A.size(0), l->r);
    const bool q1 = l->module == "model.layers.1.self_attn.q_proj";
    EXPECT_DOUBLE_EQ(l->scale, (q1 ? 3.0 : 8.0) / l->r) << l->module;
  }
  Tensor ids = Tensor::from_i32({1, 5, 9, 200}, {1, 4});
  Tensor want = model.forward(ids);
  const std::string dir = testing::TempDir() + "/peft_patterns";
  fs::remove_all(dir);
  lm.save(dir);
  LlamaModel fresh = LlamaModel::load(kModels + "llama");
  LoraModel back = LoraModel::load(fresh, dir);
  EXPECT_EQ(rel_err(fresh.forward(ids), want), 0.0);
}

TEST(LoraModel, ConfigErrors) {
  LlamaModel model = LlamaModel::load(kModels + "llama");
  LoraConfig cfg;
  set_target_modules(cfg, "q_proj");
  cfg.r = 0;
  std::string msg = error_of([&] { LoraModel::create(model, cfg, 0); });
  EXPECT_NE(msg.find("r must be > 0"), std::string::npos) << msg;
  cfg.r = 4;
  cfg.lora_dropout = 1.5;
  msg = error_of([&] { LoraModel::create(model, cfg, 0); });
  EXPECT_NE(msg.find("lora_dropout"), std::string::npos) << msg;
  cfg.lora_dropout = 0.05;
  set_target_modules(cfg, "qkv");
  msg = error_of([&] { LoraModel::create(model, cfg, 0); });
  EXPECT_NE(msg.find("model.layers.0.self_attn.q_proj"), std::string::npos) << msg;
  cfg.modules_to_save = {"score"};
  set_target_modules(cfg, "q_proj");
  msg = error_of([&] { LoraModel::create(model, cfg, 0); });
  EXPECT_NE(msg.find("'score'"), std::string::npos) << msg;
}
