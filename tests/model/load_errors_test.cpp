// Loading failures: every missing tensor listed in one error with the folder, wrong shapes named with
// expected vs got, an unknown architecture from the config loader, unused tensors ignored.
#include <filesystem>

#include "io/safetensors.h"
#include "model/llama_model.h"
#include "model_test_util.h"

using namespace qtune;
using namespace qtune_test;
namespace fs = std::filesystem;

// A copy of the llama fixture with `drop` removed, `replace` substituted and `extra` added.
static std::string broken_copy(const std::string& tag, const std::vector<std::string>& drop,
                               const std::vector<std::pair<std::string, Tensor>>& replace_or_add) {
  std::string dir = temp_dir(tag);
  fs::copy_file(fixture("llama") + "/config.json", dir + "/config.json");
  WeightStore src = WeightStore::open(fixture("llama"));
  std::vector<std::pair<std::string, Tensor>> out;
  for (const std::string& n : src.names()) {
    if (std::find(drop.begin(), drop.end(), n) != drop.end()) continue;
    bool replaced = false;
    for (auto& r : replace_or_add) replaced |= r.first == n;
    if (!replaced) out.push_back({n, src.get(n)});
  }
  for (auto& r : replace_or_add) out.push_back(r);
  write_safetensors(dir + "/model.safetensors", out);
  return dir;
}

TEST(LoadErrors, ListsEveryMissingTensorAndTheFolder) {
  std::string dir = broken_copy(
      "missing", {"model.layers.1.mlp.up_proj.weight", "lm_head.weight", "model.norm.weight"}, {});
  expect_error([&] { LlamaModel::load(dir); }, ErrorKind::Format,
               {dir, "missing 3 tensor(s)", "model.layers.1.mlp.up_proj.weight", "lm_head.weight",
                "model.norm.weight"});
}

TEST(LoadErrors, WrongShapeNamesTensorExpectedAndGot) {
  std::string dir = broken_copy(
      "shape", {}, {{"model.layers.0.self_attn.k_proj.weight", Tensor::zeros({64, 64}, DType::F32)}});
  expect_error([&] { LlamaModel::load(dir); }, ErrorKind::Format,
               {"model.layers.0.self_attn.k_proj.weight", "expected [32, 64]", "got [64, 64]"});
}

TEST(LoadErrors, ExtraTensorsAreIgnoredAndListed) {
  std::string dir =
      broken_copy("extra", {},
                  {{"model.layers.0.self_attn.rotary_emb.inv_freq", Tensor::zeros({8}, DType::F32)},
                   {"some.other.tensor", Tensor::zeros({3}, DType::F32)}});
  LlamaModel m = LlamaModel::load(dir);
  EXPECT_EQ(m.unused_tensors(), std::vector<std::string>{"some.other.tensor"});
}

TEST(LoadErrors, UnknownArchitecture) {
  std::string dir = temp_dir("arch");
  std::ifstream in(fixture("llama") + "/config.json");
  nlohmann::json cfg = nlohmann::json::parse(in);
  cfg["architectures"] = {"GPT2LMHeadModel"};
  cfg["model_type"] = "gpt2";
  std::ofstream(dir + "/config.json") << cfg.dump();
  fs::copy_file(fixture("llama") + "/model.safetensors", dir + "/model.safetensors");
  expect_error([&] { LlamaModel::load(dir); }, ErrorKind::Config, {"GPT2LMHeadModel", "LlamaForCausalLM"});
}

TEST(LoadErrors, MissingFolder) {
  try {
    LlamaModel::load(fixture("no_such_model"));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_model"), std::string::npos) << e.what();
  }
}
