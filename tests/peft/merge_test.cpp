// `qtune merge` (peft/merge_folder.h) on the PEFT-made adapters of tests/fixtures/peft: the merged folder,
// loaded like any model, gives the logits of base + adapter (f32), its layer-0 weights equal PEFT's
// merge_and_unload (golden merged_layer0.safetensors from tools/make_merge_fixtures.py), a 4-bit base is
// dequantized as PEFT does, bf16 output, 5 GB-style sharding, config.json edits, and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"
#include "peft/lora_model.h"
#include "peft/merge_folder.h"
#include "peft_test_util.h"

using namespace qtune;
using namespace peft_test;
namespace fs = std::filesystem;

namespace {

std::string base_of(const std::string& fixture) {
  return std::string(QTUNE_SOURCE_DIR) + "/" +
         read_lora_config(kFix + fixture + "/adapter_config.json").base_model_name_or_path;
}

std::string out_dir(const std::string& tag) {
  std::string d = testing::TempDir() + "/merge_" + tag;
  fs::remove_all(d);
  return d;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

MergeOptions f32() {
  MergeOptions o;
  o.dtype_given = true;
  o.dtype = DType::F32;
  return o;
}

}  // namespace

class MergeFixture : public testing::TestWithParam<const char*> {};

TEST_P(MergeFixture, MergedFolderMatchesAdapterAndPeft) {
  const std::string name = GetParam(), dir = kFix + name, base = base_of(name), out = out_dir(name);
  MergeReport r = merge_adapter_folder(base, dir, out, f32());
  EXPECT_GT(r.merged_layers, 0);
  EXPECT_EQ(r.shards, 1);
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));

  // Logits: the merged model vs qtune's base + adapter, and vs PEFT's base + adapter.
  auto exp = SafetensorsFile::open(dir + "/expected.safetensors");
  Tensor ids = exp->get("ids").clone();
  LlamaModel with_adapter = LlamaModel::load(base);
  LoraModel lora = LoraModel::load(with_adapter, dir);
  Tensor want = with_adapter.forward(ids);
  Tensor got = LlamaModel::load(out).forward(ids);
  const double err = rel_err(got, want), err_peft = rel_err(got, exp->get("logits"));
  std::printf(
      "%-10s merged f32 logits rel err vs base+adapter %.2e, vs PEFT %.2e (%lld layers, %lld replaced, "
      "%lld dequantized)\n",
      name.c_str(), err, err_peft, (long long)r.merged_layers, (long long)r.replaced_tensors,
      (long long)r.dequantized_linears);
  EXPECT_LE(err, 3e-6);
  EXPECT_LE(err_peft, 1e-5);

  // Layer-0 weights vs PEFT's merge_and_unload (rslora_all has no golden file: logits only).
  auto store = WeightStore::open(out);
  if (fs::exists(dir + "/merged_layer0.safetensors")) {
    auto golden = SafetensorsFile::open(dir + "/merged_layer0.safetensors");
    ASSERT_FALSE(golden->tensors().empty());
    for (const TensorInfo& ti : golden->tensors()) {
      ASSERT_TRUE(store.has(ti.name)) << ti.name;
      const Tensor t = store.get(ti.name);
      EXPECT_EQ(t.dtype(), DType::F32);
      EXPECT_LE(rel_err(t, golden->get(ti.name)), 1e-6) << name << " " << ti.name;
    }
  }

  // config.json: the dtype, no quantization_config; tokenizer/generation files copied when present.
  nlohmann::json cfg = read_json(out + "/config.json");
  EXPECT_EQ(cfg.value("dtype", std::string()), "float32");
  EXPECT_FALSE(cfg.contains("quantization_config"));
  EXPECT_EQ(fs::exists(base + "/generation_config.json"), fs::exists(out + "/generation_config.json"));
  const bool quantized_base = read_json(base + "/config.json").contains("quantization_config");
  EXPECT_EQ(r.dequantized_linears > 0, quantized_base);
  for (const std::string& n : store.names()) {  // only dense float tensors: no bitsandbytes entries
    EXPECT_EQ(store.info(n).dtype, DType::F32) << n;
    EXPECT_EQ(n.find("absmax"), std::string::npos) << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Peft, MergeFixture,
                         testing::Values("lora_qv", "rslora_all", "bias_mts", "dora_qv", "qlora_nf4"));

TEST(Merge, ModulesToSaveReplaceAndUntieTheHead) {
  // bias_mts: llama_bias has tied embeddings; modules_to_save [lm_head] gives the head its own weight,
  // and PEFT then sets tie_word_embeddings false.
  const std::string dir = kFix + "bias_mts", out = out_dir("mts");
  MergeReport r = merge_adapter_folder(base_of("bias_mts"), dir, out, f32());
  EXPECT_TRUE(r.untied);
  EXPECT_FALSE(read_json(out + "/config.json").value("tie_word_embeddings", true));
  auto adapter = SafetensorsFile::open(dir + "/adapter_model.safetensors");
  auto store = WeightStore::open(out);
  EXPECT_EQ(rel_err(store.get("lm_head.weight"), adapter->get("base_model.model.lm_head.weight")), 0.0);
  EXPECT_EQ(rel_err(store.get("model.layers.1.mlp.up_proj.bias"),
                    adapter->get("base_model.model.model.layers.1.mlp.up_proj.bias")),
            0.0);
  EXPECT_GT(rel_err(store.get("lm_head.weight"), store.get("model.embed_tokens.weight")), 0.01);
}

TEST(Merge, DefaultsTo16BitAndShards) {
  const std::string dir = kFix + "lora_qv", base = base_of("lora_qv");
  const std::string ref = out_dir("ref"), bf = out_dir("bf16"), sh = out_dir("shards");
  merge_adapter_folder(base, dir, ref, f32());
  MergeReport r = merge_adapter_folder(base, dir, bf);  // f32 base -> bf16 by default
  EXPECT_EQ(r.dtype, DType::BF16);
  EXPECT_EQ(read_json(bf + "/config.json").value("dtype", std::string()), "bfloat16");
  auto s32 = WeightStore::open(ref), s16 = WeightStore::open(bf);
  ASSERT_EQ(s32.names(), s16.names());
  for (const std::string& n : s32.names()) {
    Tensor t = s16.get(n);
    ASSERT_EQ(t.dtype(), DType::BF16) << n;
    EXPECT_EQ(rel_err(t, s32.get(n).to_dtype(DType::BF16)), 0.0) << n;  // round-to-nearest-even of f32
  }

  MergeOptions o = f32();
  o.max_shard_bytes = 40000;  // the fixture is ~0.6 MB in f32
  MergeReport rs = merge_adapter_folder(base, dir, sh, o);
  EXPECT_GT(rs.shards, 2);
  EXPECT_FALSE(fs::exists(sh + "/model.safetensors"));
  nlohmann::json index = read_json(sh + "/model.safetensors.index.json");
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), rs.bytes_out);
  EXPECT_EQ(index["weight_map"].size(), s32.names().size());
  char first[64];
  std::snprintf(first, sizeof first, "model-00001-of-%05d.safetensors", rs.shards);
  EXPECT_EQ(index["weight_map"]["model.embed_tokens.weight"], first);
  auto ssh = WeightStore::open(sh);
  ASSERT_EQ(ssh.names(), s32.names());
  for (const std::string& n : s32.names()) EXPECT_EQ(rel_err(ssh.get(n), s32.get(n)), 0.0) << n;
  // Writing a single file into the same folder removes the old shards.
  merge_adapter_folder(base, dir, sh, f32());
  EXPECT_TRUE(fs::exists(sh + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(sh + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(sh + "/" + first));
}

TEST(Merge, Int8BaseIsDequantized) {
  // lora_qv was made on tests/fixtures/model/llama; quant_model/llama_int8 is that model in LLM.int8.
  const std::string out = out_dir("int8");
  MergeReport r = merge_adapter_folder(std::string(QTUNE_FIXTURES) + "/quant_model/llama_int8",
                                       kFix + "lora_qv", out, f32());
  EXPECT_EQ(r.dequantized_linears, 14);
  auto exp = SafetensorsFile::open(kFix + "lora_qv/expected.safetensors");
  const double err = rel_err(LlamaModel::load(out).forward(exp->get("ids").clone()), exp->get("logits"));
  std::printf("lora_qv merged into the int8 base: logits rel err vs the dense base + adapter %.2e\n", err);
  EXPECT_LE(err, 0.05);
}

TEST(Merge, Errors) {
  const std::string base = base_of("lora_qv"), out = out_dir("err");
  std::string m = error_of([&] { merge_adapter_folder(base, kFix + "no_such_adapter", out); });
  EXPECT_NE(m.find("adapter folder"), std::string::npos) << m;
  EXPECT_NE(m.find("no_such_adapter"), std::string::npos) << m;
  // An adapter for another base: lora_qv (hidden 64) onto llama_bias (hidden 32).
  m = error_of([&] { merge_adapter_folder(base_of("bias_mts"), kFix + "lora_qv", out); });
  EXPECT_NE(m.find("lora_qv/adapter_model.safetensors"), std::string::npos) << m;
  EXPECT_NE(m.find("has shape"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(out + "/model.safetensors"));
  m = error_of([&] { merge_adapter_folder(base, kFix + "lora_qv", base); });
  EXPECT_NE(m.find("must differ"), std::string::npos) << m;
}

TEST(Merge, AnAdapterWithNoTensorsIsNeverWritten) {
  // After merge() a LoRA-only adapter holds no tensors: save() refuses and leaves no file behind.
  LlamaModel model = LlamaModel::load(base_of("lora_qv"));
  LoraModel lora = LoraModel::load(model, kFix + "lora_qv");
  lora.merge();
  ASSERT_TRUE(lora.trainable().empty());
  const std::string out = out_dir("empty_adapter");
  std::string m = error_of([&] { lora.save(out); });
  EXPECT_NE(m.find("no tensors"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(out + "/adapter_model.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/adapter_config.json"));
}
