// `qtune quantize` folders (model/quantize_folder.h) against the transformers + bitsandbytes fixtures
// (tests/fixtures/quant_model): the same tensor names with byte-identical contents, the same
// quantization_config, tokenizer/generation files copied, and the folder loads back without options. Bad
// quantized folders fail with errors naming the file and the tensor.
#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/json_util.h"
#include "model/llama_model.h"
#include "model/quant_load.h"
#include "model/quantize_folder.h"
#include "model_test_util.h"
#include "quant/bnb_format.h"

using namespace qtune;
using namespace qtune_test;
namespace fs = std::filesystem;

namespace {

std::string qfixture(const std::string& name) {
  return std::string(QTUNE_FIXTURES) + "/quant_model/" + name;
}

nlohmann::json read_json(const std::string& path) {
  return parse_json_text(read_text_file(path, ErrorKind::Io), path, ErrorKind::Format);
}

// A copy of a quantized fixture with entries dropped / replaced / added and config.json edited.
std::string broken_copy(const std::string& fixture_name, const std::string& tag,
                        const std::vector<std::string>& drop,
                        const std::vector<std::pair<std::string, Tensor>>& replace_or_add,
                        const std::function<void(nlohmann::json&)>& edit_config = nullptr) {
  std::string dir = temp_dir(tag);
  nlohmann::json cfg = read_json(qfixture(fixture_name) + "/config.json");
  if (edit_config) edit_config(cfg);
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  WeightStore src = WeightStore::open(qfixture(fixture_name));
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

Tensor bytes_tensor(const std::string& s) {
  Tensor t = Tensor::empty({(int64_t)s.size()}, DType::U8);
  std::memcpy(t.raw(), s.data(), s.size());
  return t;
}

const std::string kW = "model.layers.1.mlp.down_proj.weight";

}  // namespace

TEST(QuantFolder, QtuneQuantizeWritesWhatBitsandbytesWrites) {
  // The last one's llm_int8_skip_modules ["o_proj"] replaces transformers' default: lm_head is quantized.
  const std::pair<const char*, int> cases[] = {{"mistral_nf4_dq", 14},
                                               {"mistral_fp4_bf16", 14},
                                               {"llama_int8", 14},
                                               {"qwen2_int8", 14},
                                               {"mistral_fp4_dq_lm_head", 13}};
  for (const auto& [name, quantized] : cases) {
    SCOPED_TRACE(name);
    bool present = false;
    LoadOptions opts = read_quantization_config(qfixture(name), &present);
    const std::string src = fixture(std::string(name).substr(0, std::string(name).find('_')));
    const std::string out = temp_dir(std::string("qf_") + name);
    QuantizeReport r = quantize_model_folder(src, out, opts);
    EXPECT_EQ(r.quantized_tensors, quantized);
    EXPECT_EQ(r.shards, 1);
    WeightStore ours = WeightStore::open(out), theirs = WeightStore::open(qfixture(name));
    EXPECT_EQ(ours.names(), theirs.names());
    for (const std::string& n : theirs.names()) {
      if (!ours.has(n)) continue;
      Tensor a = ours.get(n), b = theirs.get(n);
      ASSERT_EQ(a.dtype(), b.dtype()) << n;
      ASSERT_EQ(a.shape(), b.shape()) << n;
      EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << n;
    }
    EXPECT_EQ(read_json(out + "/config.json")["quantization_config"],
              read_json(qfixture(name) + "/config.json")["quantization_config"]);
    LlamaModel m = LlamaModel::load(out);  // no options
    EXPECT_TRUE(m.layers()[0].down.quantized());
  }
}

TEST(QuantFolder, ShardsWithAnIndexAndCopiesTokenizerFiles) {
  const std::string src = temp_dir("qf_src");
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(fixture("mistral") + "/" + f, src + "/" + f);
  std::ofstream(src + "/tokenizer.json") << "{}";
  const std::string out = temp_dir("qf_shards");
  LoadOptions o;
  o.load_in_4bit = true;
  QuantizeReport r = quantize_model_folder(src, out, o, Device::CPU, /*max_shard_bytes=*/100000);
  EXPECT_GT(r.shards, 1);
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(out + "/model-00001-of-0000" + std::to_string(r.shards) + ".safetensors"));
  EXPECT_TRUE(fs::exists(out + "/tokenizer.json"));
  LlamaModel m = LlamaModel::load(out);
  EXPECT_TRUE(m.layers()[1].q.quantized());
}

TEST(QuantFolder, RefusesQuantizedInputAndConflictingOptions) {
  const std::string out = temp_dir("qf_twice");
  LoadOptions o;
  o.load_in_8bit = true;
  expect_error([&] { quantize_model_folder(qfixture("llama_int8"), out, o); }, ErrorKind::Usage,
               {"already quantized"});
  LoadOptions four;
  four.load_in_4bit = true;
  expect_error([&] { LlamaModel::load(qfixture("llama_int8"), Device::CPU, four); }, ErrorKind::Usage,
               {"already quantized", "int8"});
}

TEST(QuantFolder, BadFilesNameTheFileAndTheTensor) {
  // Wrong packed size.
  std::string d = broken_copy("mistral_nf4_dq", "packed", {}, {{kW, Tensor::zeros({100, 1}, DType::U8)}});
  expect_error([&] { LlamaModel::load(d); }, ErrorKind::Format, {d + "/model.safetensors", kW});
  // Missing quant_state entry.
  d = broken_copy("mistral_nf4_dq", "nostate", {kW + ".quant_state.bitsandbytes__nf4"}, {});
  expect_error([&] { LlamaModel::load(d); }, ErrorKind::Format, {"model.safetensors", kW, "quant_state"});
  // Missing absmax.
  d = broken_copy("mistral_nf4_dq", "noabsmax", {kW + ".absmax"}, {});
  expect_error([&] { LlamaModel::load(d); }, ErrorKind::Format, {"model.safetensors", kW + ".absmax"});
  // Unknown quant type.
  WeightStore s = WeightStore::open(qfixture("mistral_nf4_dq"));
  Tensor state = s.get(kW + ".quant_state.bitsandbytes__nf4");
  std::string json((const char*)state.raw(), state.nbytes());
  d = broken_copy("mistral_nf4_dq", "qtype", {kW + ".quant_state.bitsandbytes__nf4"},
                  {{kW + ".quant_state.bitsandbytes__int3", state}});
  expect_error([&] { LlamaModel::load(d); }, ErrorKind::Format, {"model.safetensors", kW, "unknown", "int3"});
  // bnb_4bit_quant_storage bfloat16 (where down_proj stays dense): a wrong byte count, and an unknown quant
  // type, name the tensor.
  const std::string kU = "model.layers.0.mlp.up_proj.weight";
  Tensor ustate =
      WeightStore::open(qfixture("mistral_nf4_bf16_storage_skip")).get(kU + ".quant_state.bitsandbytes__nf4");
  d = broken_copy("mistral_nf4_bf16_storage_skip", "bf16packed", {},
                  {{kU, Tensor::zeros({100, 1}, DType::BF16)}});
  expect_error([&] { LlamaModel::load(d); }, ErrorKind::Format,
               {"model.safetensors", kU, "BF16[100, 1]", "bnb_4bit_quant_storage"});
  d = broken_copy("mistral_nf4_bf16_storage_skip", "bf16qtype", {kU + ".quant_state.bitsandbytes__nf4"},
                  {{kU + ".quant_state.bitsandbytes__int3", ustate}});
  expect_error([&] { LlamaModel::load(d); }, ErrorKind::Format, {"model.safetensors", kU, "unknown", "int3"});
  // Block size not a power of two.
  std::string bad = json;
  bad.replace(bad.find("\"blocksize\": 64"), 15, "\"blocksize\": 48");
  d = broken_copy("mistral_nf4_dq", "bs", {}, {{kW + ".quant_state.bitsandbytes__nf4", bytes_tensor(bad)}});
  expect_error([&] { LlamaModel::load(d); }, ErrorKind::Format, {"model.safetensors", kW, "48"});
  // quantization_config inconsistent with the tensors.
  d = broken_copy("mistral_nf4_dq", "cfg_fp4", {}, {},
                  [](nlohmann::json& c) { c["quantization_config"]["bnb_4bit_quant_type"] = "fp4"; });
  expect_error([&] { LlamaModel::load(d); }, ErrorKind::Format,
               {"model.safetensors", "nf4", "fp4", "quantization_config"});
  d = broken_copy("mistral_nf4_dq", "cfg_none", {}, {},
                  [](nlohmann::json& c) { c.erase("quantization_config"); });
  expect_error([&] { LlamaModel::load(d); }, ErrorKind::Format,
               {"model.safetensors", "4-bit", "quantization_config is missing"});
  d = broken_copy("mistral_nf4_dq", "cfg_bad", {}, {},
                  [](nlohmann::json& c) { c["quantization_config"]["bnb_4bit_quant_type"] = "nf3"; });
  expect_error([&] { LlamaModel::load(d); }, ErrorKind::Format, {"config.json", "nf3"});
  // 8-bit: missing SCB, wrong SCB shape.
  const std::string W8 = "model.layers.0.self_attn.q_proj";
  d = broken_copy("llama_int8", "noscb", {W8 + ".SCB"}, {});
  expect_error([&] { LlamaModel::load(d); }, ErrorKind::Format, {"model.safetensors", W8 + ".SCB"});
  d = broken_copy("llama_int8", "scbshape", {}, {{W8 + ".SCB", Tensor::zeros({3}, DType::F32)}});
  expect_error([&] { LlamaModel::load(d); }, ErrorKind::Format, {"model.safetensors", W8 + ".SCB", "[64]"});
}
