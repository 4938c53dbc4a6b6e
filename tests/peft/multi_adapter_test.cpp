// Several adapters on one base (peft/adapter_set.h) against PEFT (tests/fixtures/peft/weighted, made by
// tools/make_ia3_fixtures.py): each loaded LoRA adapter, made active, gives PEFT's logits for it; disabled
// gives the base model's; merge then unmerge (LoRA, IA3) restores the weights; add_weighted_adapter
// "linear" and "cat" give PEFT's combined A, B and logits; one request per adapter through generate().
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/generate.h"
#include "peft/adapter_set.h"
#include "peft/bottleneck_model.h"
#include "peft/ia3_model.h"
#include "peft_test_util.h"

using namespace qtune;
using namespace peft_test;
namespace fs = std::filesystem;

namespace {

const std::string kW = kFix + "weighted/";

std::vector<std::vector<float>> all_weights(LlamaModel& m) {
  std::vector<std::vector<float>> w;
  for (auto& [n, lin] : linear_modules(m)) w.push_back(lin->weight.to_f32_vector());
  return w;
}

double weights_err(LlamaModel& m, const std::vector<std::vector<float>>& w0) {
  double worst = 0;
  size_t i = 0;
  for (auto& [n, lin] : linear_modules(m)) {
    worst = std::max(worst, rel_err(lin->weight, Tensor::from_f32(w0[i], {(int64_t)w0[i].size()})));
    ++i;
  }
  return worst;
}

bool any_adapter(LlamaModel& m) {
  for (auto& [n, lin] : linear_modules(m))
    if (lin->adapter) return true;
  return false;
}

}  // namespace

TEST(AdapterSet, SelectDisableMatchPeft) {
  LlamaModel model = LlamaModel::load(kModels + "llama");
  auto exp = SafetensorsFile::open(kW + "expected.safetensors");
  Tensor ids = exp->get("ids").clone();
  Tensor base = model.forward(ids);
  AdapterSet set(model);
  for (const char* n : {"a", "b", "c"}) set.load(n, kW + n);
  set.load("ia3", kFix + "ia3_default");
  BottleneckConfig bc;
  bc.bottleneck_size = 4;
  BottleneckModel bn = BottleneckModel::create(model, bc, 3);
  for (const NamedTensor& t : bn.trainable())
    if (t.name.find("adapter_up.bias") != std::string::npos) t.tensor.data<float>()[0] = 0.5f;
  const std::string bdir = testing::TempDir() + "/multi_bottleneck";
  fs::remove_all(bdir);
  bn.save(bdir);
  bn.detach();
  set.load("bottleneck", bdir);
  EXPECT_EQ(set.names().size(), 5u);
  EXPECT_EQ(set.active(), "");
  EXPECT_FALSE(any_adapter(model));  // loaded adapters are inactive
  EXPECT_EQ(rel_err(model.forward(ids), base), 0.0);
  for (const char* n : {"a", "b", "c"}) {
    set.set_active(n);
    const double err = rel_err(model.forward(ids), exp->get(std::string("logits_") + n));
    std::printf("adapter %s active: logits rel err vs PEFT %.2e\n", n, err);
    EXPECT_LE(err, 5e-6) << n;
  }
  set.set_active("ia3");
  auto ia3_exp = SafetensorsFile::open(kFix + "ia3_default/expected.safetensors");
  Tensor ia3_ids = ia3_exp->get("ids").clone();
  EXPECT_LE(rel_err(model.forward(ia3_ids), ia3_exp->get("logits")), 5e-6);
  set.set_active("bottleneck");
  EXPECT_GT(rel_err(model.forward(ids), base), 1e-3);
  set.disable();
  EXPECT_FALSE(any_adapter(model));
  EXPECT_EQ(rel_err(model.forward(ids), base), 0.0);  // disabled = the base model exactly
  EXPECT_LE(rel_err(base, exp->get("base_logits")), 1e-5);
  std::string msg = error_of([&] { set.set_active("d"); });
  EXPECT_NE(msg.find("no adapter named 'd' (loaded: a, b, c, ia3, bottleneck)"), std::string::npos) << msg;
  msg = error_of([&] { set.load("a", kW + "b"); });
  EXPECT_NE(msg.find("already loaded"), std::string::npos) << msg;
  msg = error_of([&] { set.merge(); });
  EXPECT_NE(msg.find("no active adapter"), std::string::npos) << msg;
  set.set_active("bottleneck");
  msg = error_of([&] { set.merge(); });
  EXPECT_NE(msg.find("BOTTLENECK adapters cannot be merged"), std::string::npos) << msg;
}

TEST(AdapterSet, MergeThenUnmergeRestoresWeights) {
  LlamaModel model = LlamaModel::load(kModels + "llama");
  auto exp = SafetensorsFile::open(kW + "expected.safetensors");
  auto ia3_exp = SafetensorsFile::open(kFix + "ia3_default/expected.safetensors");
  Tensor ids = exp->get("ids").clone();
  const auto w0 = all_weights(model);
  AdapterSet set(model);
  set.load("a", kW + "a");
  set.load("ia3", kFix + "ia3_default");
  for (const char* n : {"a", "ia3"}) {
    const bool lora = std::string(n) == "a";
    Tensor want = lora ? exp->get("logits_a") : ia3_exp->get("logits");
    set.set_active(n);
    set.merge();
    EXPECT_TRUE(set.merged());
    EXPECT_FALSE(any_adapter(model)) << n;  // the plain (fusable) base path
    EXPECT_GT(weights_err(model, w0), 1e-3) << n;
    const double merged = rel_err(model.forward(ids), want);
    set.unmerge();
    const double restored = weights_err(model, w0);
    const double after = rel_err(model.forward(ids), want);
    std::printf("%-4s merged logits err %.2e, weights after unmerge %.2e, logits after %.2e\n", n, merged,
                restored, after);
    EXPECT_LE(merged, 1e-5) << n;
    EXPECT_LE(restored, 1e-6) << n;
    EXPECT_LE(after, 5e-6) << n;
    set.merge();
    set.disable();  // disabling a merged adapter unmerges it (as PEFT)
    EXPECT_FALSE(any_adapter(model));
    EXPECT_LE(weights_err(model, w0), 1e-6) << n;
  }
}

TEST(AdapterSet, AddWeightedAdapterMatchesPeft) {
  LlamaModel model = LlamaModel::load(kModels + "llama");
  auto exp = SafetensorsFile::open(kW + "expected.safetensors");
  Tensor ids = exp->get("ids").clone();
  AdapterSet set(model);
  for (const char* n : {"a", "b", "c"}) set.load(n, kW + n);
  set.set_active("c");
  set.add_weighted_adapter({"a", "b"}, {0.7, -0.4}, "lin", "linear");
  set.add_weighted_adapter({"a", "b", "c"}, {0.5, 1.3, -0.8}, "cat", "cat");
  EXPECT_EQ(set.active(), "c");  // unchanged
  EXPECT_LE(rel_err(model.forward(ids), exp->get("logits_c")), 5e-6);
  for (const char* n : {"lin", "cat"}) {
    const std::string name = n;
    set.set_active(name);
    const LoraModel& lm = lora_of(set.get(name));
    const LoraLayer* q1 = nullptr;
    for (const auto& l : lm.layers())
      if (l->module == "model.layers.1.self_attn.q_proj") q1 = l.get();
    ASSERT_TRUE(q1);
    const double ea = rel_err(q1->A, exp->get(name + ".q1.lora_A"));
    const double eb = rel_err(q1->B, exp->get(name + ".q1.lora_B"));
    EXPECT_NEAR(q1->scale, exp->get(name + ".q1.scaling").to_f32_vector()[0], 1e-6);
    const double el = rel_err(model.forward(ids), exp->get("logits_" + name));
    std::printf("add_weighted_adapter %-3s: r %ld, A err %.2e, B err %.2e, logits err vs PEFT %.2e\n", n,
                (long)lm.config().r, ea, eb, el);
    EXPECT_LE(ea, 1e-6);
    EXPECT_LE(eb, 1e-6);
    EXPECT_LE(el, 5e-6);
    EXPECT_EQ(lm.config().r, name == "cat" ? 10 : 4);
    // It saves and loads back as an ordinary LoRA adapter.
    const std::string dir = testing::TempDir() + "/weighted_" + name;
    fs::remove_all(dir);
    set.get(name).save(dir);
    LlamaModel fresh = LlamaModel::load(kModels + "llama");
    LoraModel back = LoraModel::load(fresh, dir);
    EXPECT_LE(rel_err(fresh.forward(ids), exp->get("logits_" + name)), 5e-6);
  }
  std::string msg = error_of([&] { set.add_weighted_adapter({"a", "c"}, {1, 1}, "bad", "linear"); });
  EXPECT_NE(msg.find("equal ranks"), std::string::npos) << msg;
  msg = error_of([&] { set.add_weighted_adapter({"a", "b"}, {1, 1}, "bad", "svd"); });
  EXPECT_NE(msg.find("'svd' is not implemented"), std::string::npos) << msg;
  msg = error_of([&] { set.add_weighted_adapter({"a", "b"}, {1}, "bad", "cat"); });
  EXPECT_NE(msg.find("2 adapters but 1 weights"), std::string::npos) << msg;
  set.load("ia3", kFix + "ia3_default");
  msg = error_of([&] { set.add_weighted_adapter({"a", "ia3"}, {1, 1}, "bad", "cat"); });
  EXPECT_NE(msg.find("'ia3' is a IA3 adapter"), std::string::npos) << msg;
}

TEST(AdapterSet, OneAdapterPerRequest) {
  LlamaModel model = LlamaModel::load(kModels + "llama");
  AdapterSet set(model);
  for (const char* n : {"a", "b"}) set.load(n, kW + n);
  const std::vector<int32_t> prompt = {1, 5, 17, 42, 99};
  GenerateOptions o;
  o.max_new_tokens = 6;
  auto run = [&](const std::string& name) {
    set.set_active(name);
    return generate(model, prompt, o).tokens;
  };
  const auto base = run(""), a = run("a"), b = run("b");
  EXPECT_NE(a, base);
  EXPECT_NE(a, b);
  EXPECT_EQ(run("a"), a);  // switching back and forth is stateless
  EXPECT_EQ(run(""), base);
}
