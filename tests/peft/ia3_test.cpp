// IA3 against PEFT: folders PEFT wrote (tools/make_ia3_fixtures.py) give PEFT's logits and greedy tokens;
// merge / unmerge; the committed qtune-written folder is regenerated bit-identically and its logits equal
// the ones PEFT computed from it (peft_logits.safetensors, written by the tool's --check-qtune); defaults
// and errors that name the file.
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
#include "peft/ia3_model.h"
#include "peft/peft_adapter.h"
#include "peft_test_util.h"

using namespace qtune;
using namespace peft_test;
namespace fs = std::filesystem;

namespace {

std::string base_of(const std::string& dir) {
  nlohmann::json j = nlohmann::json::parse(read_file(dir + "/adapter_config.json"));
  return std::string(QTUNE_SOURCE_DIR) + "/" + j["base_model_name_or_path"].get<std::string>();
}

std::vector<int32_t> greedy(const LlamaModel& m, const Tensor& ids, int n) {
  std::vector<float> row = ids.to_f32_vector();
  std::vector<int32_t> prompt;
  for (int64_t t = 0; t < ids.size(1); ++t) prompt.push_back((int32_t)row[t]);
  GenerateOptions o;
  o.max_new_tokens = n;
  return generate(m, prompt, o).tokens;
}

}  // namespace

class Ia3Fixture : public testing::TestWithParam<const char*> {};

TEST_P(Ia3Fixture, LogitsAndGreedyMatchPeft) {
  const std::string dir = kFix + GetParam();
  auto exp = SafetensorsFile::open(dir + "/expected.safetensors");
  LlamaModel model = LlamaModel::load(base_of(dir));
  Tensor ids = exp->get("ids").clone();
  const double base_err = rel_err(model.forward(ids), exp->get("base_logits"));
  std::unique_ptr<PeftAdapter> a = load_peft_adapter(model, dir);  // by peft_type
  ASSERT_STREQ(a->peft_type(), "IA3");
  const double err = rel_err(model.forward(ids), exp->get("logits"));
  std::printf("%-12s IA3 logits rel err vs PEFT %.2e (base model %.2e)\n", GetParam(), err, base_err);
  EXPECT_LE(err, 5e-6);
  EXPECT_GT(rel_err(exp->get("logits"), exp->get("base_logits")), 0.1);  // the adapter matters
  std::vector<float> want = exp->get("greedy").to_f32_vector();
  std::vector<int32_t> got = greedy(model, ids, (int)want.size());
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], (int32_t)want[i]) << "greedy token " << i;
  a->detach();
  EXPECT_LE(rel_err(model.forward(ids), exp->get("base_logits")), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Peft, Ia3Fixture, testing::Values("ia3_default", "ia3_bias", "ia3_bundled"));

TEST_P(Ia3Fixture, MergeUnmergeRestoresWeights) {
  const std::string dir = kFix + GetParam();
  auto exp = SafetensorsFile::open(dir + "/expected.safetensors");
  LlamaModel model = LlamaModel::load(base_of(dir));
  std::vector<std::vector<float>> w0, b0;
  for (auto& [n, lin] : linear_modules(model)) {
    w0.push_back(lin->weight.to_f32_vector());
    b0.push_back(lin->bias.defined() ? lin->bias.to_f32_vector() : std::vector<float>());
  }
  Ia3Model ia3 = Ia3Model::load(model, dir);
  Tensor ids = exp->get("ids").clone();
  ia3.merge();
  EXPECT_TRUE(ia3.merged());
  for (auto& [n, lin] : linear_modules(model)) EXPECT_FALSE(lin->adapter) << n;
  const double merged_err = rel_err(model.forward(ids), exp->get("logits"));
  EXPECT_LE(merged_err, 1e-5);
  ia3.unmerge();
  double worst = 0;
  size_t i = 0;
  for (auto& [n, lin] : linear_modules(model)) {
    worst = std::max(worst, rel_err(lin->weight, Tensor::from_f32(w0[i], {(int64_t)w0[i].size()})));
    if (lin->bias.defined())
      worst = std::max(worst, rel_err(lin->bias, Tensor::from_f32(b0[i], {(int64_t)b0[i].size()})));
    ++i;
  }
  std::printf("%-12s merged logits err %.2e; weights after unmerge rel err %.2e\n", GetParam(), merged_err,
              worst);
  EXPECT_LE(worst, 5e-6);  // f32 rounding of W·l / (l + 1e-8), larger where some l is small
  EXPECT_LE(rel_err(model.forward(ids), exp->get("logits")), 5e-6);  // adapters back on
}

TEST(Ia3, FreshAdapterIsTheBaseModelAndDefaultsArePefts) {
  LlamaModel model = LlamaModel::load(kModels + "llama");
  Tensor ids = Tensor::from_i32({1, 5, 9, 200, 31}, {1, 5});
  Tensor base = model.forward(ids);
  Ia3Model ia3 = Ia3Model::create(model, Ia3Config{});
  ASSERT_EQ(ia3.targets().size(), 6u);  // k_proj, v_proj, down_proj in 2 layers
  for (const auto& l : ia3.layers()) {
    EXPECT_EQ(l->feedforward, l->module.find("down_proj") != std::string::npos) << l->module;
    EXPECT_EQ(l->l.shape(), l->feedforward ? Shape({1, 160}) : Shape({32, 1})) << l->module;
  }
  EXPECT_EQ(rel_err(model.forward(ids), base), 0.0);  // vectors of ones
  auto tr = ia3.trainable();
  ASSERT_EQ(tr.size(), 6u);
  EXPECT_EQ(tr[0].name, "base_model.model.model.layers.0.self_attn.k_proj.ia3_l");
  Ia3Config q;
  q.apply_defaults("qwen2");
  EXPECT_EQ(q.target_modules, std::vector<std::string>({"q_proj", "v_proj", "down_proj"}));
  Ia3Config bad;
  set_ia3_modules(bad, "q_proj,v_proj", "down_proj");
  std::string msg = error_of([&] { bad.apply_defaults("llama"); });
  EXPECT_NE(msg.find("'down_proj' is not in target_modules"), std::string::npos) << msg;
  Ia3Config none;
  msg = error_of([&] { none.apply_defaults("gpt2"); });
  EXPECT_NE(msg.find("no default target_modules"), std::string::npos) << msg;
}

// The committed qtune-written folder: regenerated here (QTUNE_REGEN_PEFT=1 writes it into the source tree)
// and compared byte for byte; tools/make_ia3_fixtures.py --check-qtune loads it in PEFT and writes PEFT's
// logits next to it, which qtune's logits must match.
TEST(Ia3, QtuneWrittenFixture) {
  const std::string name = "qtune_written_ia3";
  LlamaModel model = LlamaModel::load(kModels + "llama_bias");
  Ia3Config cfg;
  set_ia3_modules(cfg, "q_proj,v_proj,o_proj,up_proj,down_proj", "up_proj,down_proj");
  cfg.base_model_name_or_path = "tests/fixtures/model/llama_bias";
  Ia3Model ia3 = Ia3Model::create(model, cfg);
  int k = 0;
  for (const NamedTensor& t : ia3.trainable()) {
    float* v = t.tensor.data<float>();
    for (int64_t i = 0; i < t.tensor.numel(); ++i) v[i] = 1.0f + 0.05f * (float)((i * 7 + k * 3) % 13 - 6);
    ++k;
  }
  ia3.refresh();
  Tensor ids = Tensor::from_i32({1, 5, 17, 42, 99, 3, 250, 7, 1, 200, 31, 8, 8, 150, 77, 2}, {2, 8});
  Tensor logits = model.forward(ids);
  const bool regen = std::getenv("QTUNE_REGEN_PEFT") != nullptr;
  const std::string dir = regen ? kFix + name : testing::TempDir() + "/" + name;
  if (!regen) fs::remove_all(dir);
  ia3.save(dir);
  write_safetensors(dir + "/qtune_logits.safetensors", {{"ids", ids}, {"logits", logits}});
  if (regen) return;
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "qtune_logits.safetensors"})
    EXPECT_TRUE(read_file(dir + "/" + f) == read_file(kFix + name + "/" + f))
        << name << "/" << f << " differs from the committed fixture (QTUNE_REGEN_PEFT=1 rewrites it)";
  auto peft = SafetensorsFile::open(kFix + name + "/peft_logits.safetensors");
  const double err = rel_err(logits, peft->get("logits"));
  std::printf("qtune-written IA3: qtune logits vs PEFT's from the same folder %.2e\n", err);
  EXPECT_LE(err, 5e-6);
  LlamaModel fresh = LlamaModel::load(kModels + "llama_bias");
  Ia3Model back = Ia3Model::load(fresh, kFix + name);
  EXPECT_EQ(rel_err(fresh.forward(ids), logits), 0.0);
}

TEST(Ia3, ReadErrorsNameTheFile) {
  LlamaModel model = LlamaModel::load(kModels + "llama");
  // Unknown peft_type through the by-type loader.
  std::string d = copy_fixture("ia3_default", "ptype");
  edit_config(d, [](nlohmann::json& j) { j["peft_type"] = "SOMETHING"; });
  std::string msg = error_of([&] { load_peft_adapter(model, d); });
  EXPECT_NE(msg.find("adapter_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("peft_type 'SOMETHING' is not supported"), std::string::npos) << msg;
  msg = error_of([&] { Ia3Model::load(model, kFix + "lora_qv"); });
  EXPECT_NE(msg.find("peft_type 'LORA' is not IA3"), std::string::npos) << msg;
  // A config that does not match the tensors: k_proj made feed-forward wants [1, 64].
  d = copy_fixture("ia3_default", "shape");
  edit_config(d, [](nlohmann::json& j) {
    j["feedforward_modules"] = {"k_proj"};
    j["target_modules"] = {"k_proj", "v_proj", "down_proj"};
  });
  msg = error_of([&] { Ia3Model::load(model, d); });
  EXPECT_NE(msg.find("adapter_model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("k_proj.ia3_l' has shape [32, 1], expected [1, 64]"), std::string::npos) << msg;
  // An adapter made for a base with another hidden size (llama: 64, llama_bias: 32).
  LlamaModel small = LlamaModel::load(kModels + "llama_bias");
  msg = error_of([&] { load_peft_adapter(small, kFix + "ia3_default"); });
  EXPECT_NE(msg.find("adapter_model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hidden size 32"), std::string::npos) << msg;
  // Tensors the config does not explain.
  d = copy_fixture("ia3_default", "extra");
  edit_config(d, [](nlohmann::json& j) { j["target_modules"] = {"k_proj", "down_proj"}; });
  msg = error_of([&] { Ia3Model::load(model, d); });
  EXPECT_NE(msg.find("match nothing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("v_proj.ia3_l"), std::string::npos) << msg;
  // Unsupported fields and bad types name the field.
  d = copy_fixture("ia3_default", "mts");
  edit_config(d, [](nlohmann::json& j) { j["modules_to_save"] = {"lm_head"}; });
  msg = error_of([&] { Ia3Model::load(model, d); });
  EXPECT_NE(msg.find("'modules_to_save'"), std::string::npos) << msg;
  edit_config(d, [](nlohmann::json& j) {
    j["modules_to_save"] = nullptr;
    j["feedforward_modules"] = 3;
  });
  msg = error_of([&] { Ia3Model::load(model, d); });
  EXPECT_NE(msg.find("field 'feedforward_modules'"), std::string::npos) << msg;
  // Missing folder / files.
  msg = error_of([&] { load_peft_adapter(model, testing::TempDir() + "/no_such_ia3"); });
  EXPECT_NE(msg.find("no_such_ia3"), std::string::npos) << msg;
}

TEST(Ia3, QuantizedBaseRunsButDoesNotMerge) {
  LoadOptions q;
  q.load_in_4bit = true;
  LlamaModel model = LlamaModel::load(kModels + "llama", Device::CPU, q);
  Ia3Model ia3 = Ia3Model::load(model, kFix + "ia3_default");
  Tensor ids = Tensor::from_i32({1, 5, 9, 200}, {1, 4});
  Tensor with = model.forward(ids);
  ia3.detach();
  EXPECT_GT(rel_err(with, model.forward(ids)), 0.05);
  ia3.attach();
  std::string msg = error_of([&] { ia3.merge(); });
  EXPECT_NE(msg.find("quantized"), std::string::npos) << msg;
  EXPECT_FALSE(ia3.merged());
}
