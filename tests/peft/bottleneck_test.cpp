// Bottleneck adapters (qtune's own folder format, docs/adapters.md): a fresh adapter is the identity; the
// layer computes y = h + up(act(down(h))) (checked against plain loops); Houlsby vs Pfeiffer placement;
// save/load round trip with the documented keys and fields; errors that name the file.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "io/safetensors.h"
#include "peft/bottleneck_model.h"
#include "peft/peft_adapter.h"
#include "peft_test_util.h"

using namespace qtune;
using namespace peft_test;
namespace fs = std::filesystem;

namespace {

// Non-zero up-projections and biases (a fresh adapter is the identity).
void randomize(BottleneckModel& m, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.2f);
  for (const NamedTensor& t : m.trainable())
    if (t.name.find("adapter_down.weight") == std::string::npos) {
      float* p = t.tensor.data<float>();
      for (int64_t i = 0; i < t.tensor.numel(); ++i) p[i] = nd(rng);
    }
  m.refresh();
}

std::string saved(BottleneckModel& m, const std::string& tag) {
  const std::string dir = testing::TempDir() + "/bottleneck_" + tag;
  fs::remove_all(dir);
  m.save(dir);
  return dir;
}

}  // namespace

TEST(Bottleneck, FreshAdapterIsIdentityAndStylesPlaceIt) {
  LlamaModel model = LlamaModel::load(kModels + "llama");
  Tensor ids = Tensor::from_i32({1, 5, 9, 200, 31, 7}, {2, 3});
  Tensor base = model.forward(ids);
  BottleneckConfig cfg;
  cfg.bottleneck_size = 8;
  BottleneckModel h = BottleneckModel::create(model, cfg, 1);
  ASSERT_EQ(h.targets().size(), 4u);  // o_proj and down_proj of 2 layers
  EXPECT_EQ(h.targets()[0], "model.layers.0.self_attn.o_proj");
  EXPECT_EQ(h.targets()[1], "model.layers.0.mlp.down_proj");
  EXPECT_EQ(rel_err(model.forward(ids), base), 0.0);  // up = 0
  const double bound = 1.0 / std::sqrt(64.0);
  for (float v : h.layers()[0]->down_w.to_f32_vector()) ASSERT_LE(std::fabs(v), bound);
  randomize(h, 3);
  EXPECT_GT(rel_err(model.forward(ids), base), 0.05);
  h.detach();
  EXPECT_EQ(rel_err(model.forward(ids), base), 0.0);
  cfg.adapter_style = "pfeiffer";
  BottleneckModel p = BottleneckModel::create(model, cfg, 1);
  ASSERT_EQ(p.targets().size(), 2u);
  EXPECT_EQ(p.targets()[1], "model.layers.1.mlp.down_proj");
  std::string msg = error_of([&] { p.merge(); });
  EXPECT_NE(msg.find("cannot be merged"), std::string::npos) << msg;
}

TEST(Bottleneck, LayerMathMatchesLoops) {
  LlamaModel model = LlamaModel::load(kModels + "llama");
  for (AdapterAct act : {AdapterAct::Relu, AdapterAct::Silu, AdapterAct::Gelu, AdapterAct::Tanh}) {
    BottleneckConfig cfg;
    cfg.bottleneck_size = 5;
    cfg.non_linearity = act;
    BottleneckModel m = BottleneckModel::create(model, cfg, 7);
    randomize(m, 11);
    const BottleneckLayer& L = *m.layers()[1];
    const int64_t N = 3, C = L.C, r = L.r;
    std::vector<float> h(N * C);
    for (int64_t i = 0; i < N * C; ++i) h[i] = std::sin(0.37f * (float)i) * 1.5f;
    Tensor out = Tensor::from_f32(h, {N, C});
    L.apply(out, Tensor());
    std::vector<float> got = out.to_f32_vector();
    const float *dw = L.down_w.data<float>(), *db = L.down_b.data<float>();
    const float *uw = L.up_w.data<float>(), *ub = L.up_b.data<float>();
    double num = 0, den = 0;
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> a(r);
      for (int64_t k = 0; k < r; ++k) {
        double z = db[k];
        for (int64_t c = 0; c < C; ++c) z += (double)dw[k * C + c] * h[n * C + c];
        a[k] = act == AdapterAct::Relu   ? std::max(0.0, z)
               : act == AdapterAct::Silu ? z / (1 + std::exp(-z))
               : act == AdapterAct::Gelu ? 0.5 * z * (1 + std::erf(z / std::sqrt(2.0)))
                                         : std::tanh(z);
      }
      for (int64_t c = 0; c < C; ++c) {
        double y = h[n * C + c] + ub[c];
        for (int64_t k = 0; k < r; ++k) y += (double)uw[c * r + k] * a[k];
        num += (got[n * C + c] - y) * (got[n * C + c] - y);
        den += y * y;
      }
    }
    EXPECT_LE(std::sqrt(num / den), 1e-6) << adapter_act_name(act);
  }
}

TEST(Bottleneck, ActivationDerivativesMatchFiniteDifferences) {
  std::vector<float> zs;
  for (int i = -40; i <= 40; ++i)
    if (i != 0) zs.push_back(0.1f * (float)i + 0.013f);  // away from relu's kink
  const int64_t n = (int64_t)zs.size();
  Tensor z = Tensor::from_f32(zs, {n}), ones = Tensor::from_f32(std::vector<float>(n, 1.0f), {n});
  for (AdapterAct act : {AdapterAct::Relu, AdapterAct::Silu, AdapterAct::Gelu, AdapterAct::Tanh}) {
    Tensor d = Tensor::empty({n}, DType::F32), ap = Tensor::empty({n}, DType::F32),
           am = Tensor::empty({n}, DType::F32);
    adapter_act_backward(d, ones, z, act);
    const float h = 1e-3f;
    std::vector<float> zp(zs), zm(zs);
    for (int64_t i = 0; i < n; ++i) zp[i] += h, zm[i] -= h;
    adapter_act_forward(ap, Tensor::from_f32(zp, {n}), act);
    adapter_act_forward(am, Tensor::from_f32(zm, {n}), act);
    for (int64_t i = 0; i < n; ++i) {
      const double fd = ((double)ap.data<float>()[i] - am.data<float>()[i]) / (2 * h);
      EXPECT_NEAR(d.data<float>()[i], fd, 2e-3) << adapter_act_name(act) << " at z = " << zs[i];
    }
  }
}

TEST(Bottleneck, SaveLoadRoundTripInTheDocumentedFormat) {
  LlamaModel model = LlamaModel::load(kModels + "llama_bias");  // o_proj / down_proj with biases
  Tensor ids = Tensor::from_i32({1, 5, 9, 200, 31, 7}, {2, 3});
  BottleneckConfig cfg;
  cfg.bottleneck_size = 4;
  cfg.non_linearity = AdapterAct::Gelu;
  BottleneckModel m = BottleneckModel::create(model, cfg, 2);
  randomize(m, 5);
  Tensor want = model.forward(ids);
  const std::string dir = saved(m, "roundtrip");
  nlohmann::json j = nlohmann::json::parse(read_file(dir + "/adapter_config.json"));
  EXPECT_EQ(j["peft_type"], "BOTTLENECK");
  EXPECT_EQ(j["adapter_style"], "houlsby");
  EXPECT_EQ(j["bottleneck_size"], 4);
  EXPECT_EQ(j["non_linearity"], "gelu");
  EXPECT_EQ(j["hidden_size"], 32);
  EXPECT_EQ(j["target_modules"], nlohmann::json({"o_proj", "down_proj"}));
  auto st = SafetensorsFile::open(dir + "/adapter_model.safetensors");
  EXPECT_EQ(st->tensors().size(), 16u);
  EXPECT_EQ(st->get("base_model.model.model.layers.1.mlp.down_proj.adapter_down.weight").shape(),
            Shape({4, 32}));
  EXPECT_EQ(st->get("base_model.model.model.layers.1.mlp.down_proj.adapter_up.weight").shape(),
            Shape({32, 4}));
  EXPECT_EQ(st->get("base_model.model.model.layers.0.self_attn.o_proj.adapter_up.bias").shape(), Shape({32}));
  LlamaModel fresh = LlamaModel::load(kModels + "llama_bias");
  std::unique_ptr<PeftAdapter> back = load_peft_adapter(fresh, dir);  // by peft_type
  EXPECT_STREQ(back->peft_type(), "BOTTLENECK");
  EXPECT_EQ(rel_err(fresh.forward(ids), want), 0.0);
}

TEST(Bottleneck, ReadErrorsNameTheFile) {
  LlamaModel model = LlamaModel::load(kModels + "llama");
  BottleneckConfig cfg;
  cfg.bottleneck_size = 6;
  BottleneckModel m = BottleneckModel::create(model, cfg, 0);
  const std::string good = saved(m, "errors");
  auto fresh_copy = [&](const std::string& tag) {
    const std::string d = testing::TempDir() + "/bottleneck_err_" + tag;
    fs::remove_all(d);
    fs::create_directories(d);
    for (const char* f : {"adapter_config.json", "adapter_model.safetensors"})
      fs::copy_file(good + "/" + f, d + "/" + f);
    return d;
  };
  // The config's size does not match the tensors.
  std::string d = fresh_copy("size");
  edit_config(d, [](nlohmann::json& j) { j["bottleneck_size"] = 8; });
  std::string msg = error_of([&] { BottleneckModel::load(model, d); });
  EXPECT_NE(msg.find("adapter_model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("has shape [6, 64], expected [8, 64]"), std::string::npos) << msg;
  // Made for another base: the recorded hidden size, then (without it) the tensor shapes.
  LlamaModel small = LlamaModel::load(kModels + "llama_bias");
  msg = error_of([&] { load_peft_adapter(small, good); });
  EXPECT_NE(msg.find("adapter_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hidden size 64, this model has hidden size 32"), std::string::npos) << msg;
  d = fresh_copy("hidden");
  edit_config(d, [](nlohmann::json& j) { j.erase("hidden_size"); });
  msg = error_of([&] { load_peft_adapter(small, d); });
  EXPECT_NE(msg.find("adapter_model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hidden size 32"), std::string::npos) << msg;
  // Unknown style / nonlinearity / missing size / wrong type name the file and field.
  d = fresh_copy("style");
  edit_config(d, [](nlohmann::json& j) { j["adapter_style"] = "compacter"; });
  msg = error_of([&] { BottleneckModel::load(model, d); });
  EXPECT_NE(msg.find("adapter_config.json: adapter_style 'compacter' is unknown"), std::string::npos) << msg;
  edit_config(d, [](nlohmann::json& j) {
    j["adapter_style"] = "pfeiffer";
    j["non_linearity"] = "softplus";
  });
  msg = error_of([&] { BottleneckModel::load(model, d); });
  EXPECT_NE(msg.find("adapter_config.json: unknown non_linearity 'softplus'"), std::string::npos) << msg;
  edit_config(d, [](nlohmann::json& j) {
    j["non_linearity"] = "relu";
    j.erase("bottleneck_size");
  });
  msg = error_of([&] { BottleneckModel::load(model, d); });
  EXPECT_NE(msg.find("'bottleneck_size' is missing"), std::string::npos) << msg;
  // Pfeiffer reads only the MLP adapters: the attention ones are unexplained tensors.
  edit_config(d, [](nlohmann::json& j) {
    j["bottleneck_size"] = 6;
    j.erase("target_modules");
  });
  msg = error_of([&] { BottleneckModel::load(model, d); });
  EXPECT_NE(msg.find("match nothing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("o_proj.adapter_down"), std::string::npos) << msg;
}

// The committed bottleneck folder on the bundled model that tests/cli/adapter_generate_test.sh generates
// with: regenerated here (QTUNE_REGEN_PEFT=1 writes it into the source tree) and compared byte for byte.
TEST(Bottleneck, BundledFixture) {
  const std::string name = "bottleneck_bundled";
  const std::string fix = std::string(QTUNE_FIXTURES) + "/peft/" + name;
  LlamaModel model = LlamaModel::load(std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m");
  BottleneckConfig cfg;
  cfg.adapter_style = "pfeiffer";
  cfg.bottleneck_size = 8;
  cfg.non_linearity = AdapterAct::Silu;
  cfg.base_model_name_or_path = "models/qtune-tiny-8m";
  BottleneckModel m = BottleneckModel::create(model, cfg, 21);
  randomize(m, 22);
  const bool regen = std::getenv("QTUNE_REGEN_PEFT") != nullptr;
  const std::string dir = regen ? fix : testing::TempDir() + "/" + name;
  if (!regen) fs::remove_all(dir);
  m.save(dir);
  if (regen) return;
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors"})
    EXPECT_TRUE(read_file(dir + "/" + f) == read_file(fix + "/" + f))
        << name << "/" << f << " differs from the committed fixture (QTUNE_REGEN_PEFT=1 rewrites it)";
}
