// CPU offload on the GPU machine (model/device_map.h): models split between the GPU (bf16) and the CPU
// (f32) by several maps give logits equal to the all-GPU model within the bf16 rule (error against the f32
// CPU model <= 2x the all-GPU model's + 1e-3), through the full forward, batched, and KV-cache decoding in
// chunks; greedy text equals the all-GPU model's; weights and KV cache rows sit on each module's device.
// auto with a small --max-gpu-memory spills the layers that do not fit; 4-bit loading keeps GPU layers
// quantized and CPU layers f32.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "../model_test_util.h"
#include "core/allocator.h"
#include "model/generate.h"
#include "model/llama_model.h"
#include "model/quant_linear.h"

using namespace qtune;
using namespace qtune_test;

namespace {

#define REQUIRE_GPU()                                                     \
  do {                                                                    \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine"; \
  } while (0)

std::string bundled() {
  return std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";
}

LlamaModel load_mapped(const std::string& dir, const std::string& map, LoadOptions opts = {}) {
  opts.device_map = parse_device_map(map);
  return LlamaModel::load(dir, Device::CUDA, opts);
}

// The splits every model runs under (L layers): first half on the GPU with the norm and head on the CPU,
// alternate layers, everything but the LM head, and the CPU first (embedding and first half) then the GPU.
std::vector<std::pair<std::string, std::string>> splits(int L) {
  const int h = L / 2;
  std::string alt = "model.embed_tokens=cuda,model.norm=cpu,lm_head=cuda";
  for (int i = 0; i < L; i++) alt += ",model.layers." + std::to_string(i) + (i % 2 ? "=cpu" : "=cuda");
  return {
      {"first_half_gpu", "model.embed_tokens=cuda,model.layers.0-" + std::to_string(h - 1) +
                             "=cuda,model.layers." + std::to_string(h) + "-" + std::to_string(L - 1) +
                             "=cpu,model.norm=cpu,lm_head=cpu"},
      {"alternate", alt},
      {"all_but_lm_head", "model=cuda,lm_head=cpu"},
      {"cpu_first", "model.embed_tokens=cpu,model.layers.0-" + std::to_string(h - 1) + "=cpu,model.layers." +
                        std::to_string(h) + "-" + std::to_string(L - 1) +
                        "=cuda,model.norm=cuda,lm_head=cuda"},
  };
}

// Random ids [B, T] from a fixed seed.
Tensor random_ids(int64_t B, int64_t T, int64_t V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> v(B * T);
  for (auto& t : v) t = (int32_t)(rng() % (uint32_t)V);
  return Tensor::from_i32(v, {B, T});
}

// Logits of a KV-cache decode in chunks (prefill 5, then 1, 1, 3, 1, ...), rows concatenated.
std::vector<float> chunked(const LlamaModel& m, const Tensor& ids) {
  const int64_t T = ids.size(1);
  KVCache cache = m.make_cache(1, T);
  std::vector<int64_t> chunks = {5, 1, 1, 3, 1, 7};
  std::vector<float> out;
  for (int64_t pos = 0, c = 0; pos < T; c++) {
    int64_t len = std::min(c < (int64_t)chunks.size() ? chunks[c] : 1, T - pos);
    std::vector<int32_t> part(ids.data<int32_t>() + pos, ids.data<int32_t>() + pos + len);
    std::vector<float> got = m.forward(Tensor::from_i32(part, {1, len}), cache, pos).to_f32_vector();
    out.insert(out.end(), got.begin(), got.end());
    pos += len;
  }
  return out;
}

void expect_placed(const LlamaModel& m, const KVCache& cache) {
  const DeviceMap& dm = m.device_map();
  auto act = [](Device d) { return d == Device::CPU ? DType::F32 : DType::BF16; };
  EXPECT_EQ(m.embed_tokens().device(), dm.embed);
  EXPECT_EQ(m.embed_tokens().dtype(), act(dm.embed));
  EXPECT_EQ(m.final_norm().device(), dm.norm);
  EXPECT_EQ(m.lm_head().weight.device(), dm.lm_head);
  EXPECT_EQ(m.lm_head().weight.dtype(), act(dm.lm_head));
  for (size_t l = 0; l < m.layers().size(); l++) {
    const LlamaLayer& L = m.layers()[l];
    EXPECT_EQ(L.device, dm.layers[l]) << l;
    for (const Linear* lin : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) {
      EXPECT_EQ(lin->weight.device(), L.device) << lin->name;
      EXPECT_EQ(lin->weight.dtype(), act(L.device)) << lin->name;
    }
    EXPECT_EQ(L.input_norm.device(), L.device) << l;
    EXPECT_EQ(cache.k((int)l).device(), L.device) << l;
    EXPECT_EQ(cache.v((int)l).dtype(), act(L.device)) << l;
  }
}

// Greedy tokens of the split model against the all-GPU model's: equal, or parting only at a near tie
// (the f32 CPU model's top-2 margin at the first differing step within twice the bf16 logit noise).
void expect_same_greedy(const std::string& dir, const LlamaModel& split, const LlamaModel& gpu,
                        const LlamaModel& cpu, const std::vector<int32_t>& prompt, int n,
                        const std::string& tag) {
  GenerateOptions opt;
  opt.max_new_tokens = n;
  GenerateResult a = generate(split, prompt, opt), b = generate(gpu, prompt, opt);
  EXPECT_EQ(a.decode_path, "forward") << tag << ": a split model decodes through LlamaModel::forward";
  size_t k = 0;
  while (k < a.tokens.size() && k < b.tokens.size() && a.tokens[k] == b.tokens[k]) k++;
  std::printf("[ measured ] %s greedy: first %zu of %zu tokens equal the all-GPU model's\n", tag.c_str(), k,
              b.tokens.size());
  if (k == b.tokens.size()) {
    EXPECT_EQ(a.tokens, b.tokens) << tag;
    return;
  }
  ASSERT_LT(k, a.tokens.size()) << tag;
  std::vector<int32_t> prefix = prompt;
  prefix.insert(prefix.end(), b.tokens.begin(), b.tokens.begin() + k);
  Tensor ids = Tensor::from_i32(prefix, {1, (int64_t)prefix.size()});
  KVCache c1 = gpu.make_cache(1, ids.size(1)), c2 = cpu.make_cache(1, ids.size(1));
  std::vector<float> g = gpu.forward(ids, c1, 0, true).to_f32_vector();
  std::vector<float> f = cpu.forward(ids, c2, 0, true).to_f32_vector();
  double noise = 0;
  for (size_t i = 0; i < f.size(); i++) noise = std::max(noise, (double)std::fabs(g[i] - f[i]));
  const double margin = std::fabs((double)f[b.tokens[k]] - f[a.tokens[k]]);
  std::printf("[ measured ] %s: parts at step %zu: f32 margin %.4f, bf16 noise %.4f\n", tag.c_str(), k,
              margin, noise);
  EXPECT_LE(margin, 2 * noise) << tag << " (" << dir << "): left the all-GPU greedy path at a clear choice";
}

}  // namespace

class DeviceMapSplit : public testing::TestWithParam<std::string> {};

TEST_P(DeviceMapSplit, LogitsAndGreedyMatchTheAllGpuModel) {
  REQUIRE_GPU();
  const std::string dir = GetParam() == "bundled" ? bundled() : fixture(GetParam());
  if (!std::filesystem::exists(dir + "/config.json")) GTEST_SKIP() << "no model at " << dir;
  LlamaModel cpu = LlamaModel::load(dir, Device::CPU);
  LlamaModel gpu = LlamaModel::load(dir, Device::CUDA);
  const int L = cpu.config().num_hidden_layers;
  const int64_t V = cpu.config().vocab_size;
  Tensor ids = random_ids(1, 24, V, 7), ids2 = random_ids(2, 11, V, 8);
  const std::vector<float> ref = cpu.forward(ids).to_f32_vector(), ref2 = cpu.forward(ids2).to_f32_vector();
  const double gpu_err = rel_err(gpu.forward(ids).to_f32_vector(), ref);
  const double gpu_err2 = rel_err(gpu.forward(ids2).to_f32_vector(), ref2);
  const double gpu_step_err = rel_err(chunked(gpu, ids), ref);
  std::printf("[ measured ] %s all-GPU vs f32 CPU: forward %.3g, batch 2 %.3g, chunked decode %.3g\n",
              GetParam().c_str(), gpu_err, gpu_err2, gpu_step_err);
  for (const auto& [name, map] : splits(L)) {
    const std::string tag = GetParam() + " " + name;
    LlamaModel m = load_mapped(dir, map);
    ASSERT_TRUE(m.device_map().split()) << tag;
    EXPECT_EQ(m.device(), Device::CUDA);
    KVCache cache = m.make_cache(1, 8);
    expect_placed(m, cache);
    Tensor logits = m.forward(ids);
    EXPECT_EQ(logits.device(), m.device_map().lm_head) << tag;
    const double err = rel_err(logits.to_f32_vector(), ref);
    const double err2 = rel_err(m.forward(ids2).to_f32_vector(), ref2);
    const double step_err = rel_err(chunked(m, ids), ref);
    std::printf(
        "[ measured ] %s (%d of %d layers on the CPU) vs f32 CPU: forward %.3g, batch 2 %.3g, "
        "chunked decode %.3g\n",
        tag.c_str(), m.device_map().layers_on(Device::CPU), L, err, err2, step_err);
    EXPECT_LE(err, 2 * gpu_err + 1e-3) << tag;
    EXPECT_LE(err2, 2 * gpu_err2 + 1e-3) << tag;
    EXPECT_LE(step_err, 2 * gpu_step_err + 1e-3) << tag;
    std::vector<int32_t> prompt(ids.data<int32_t>(), ids.data<int32_t>() + 6);
    expect_same_greedy(dir, m, gpu, cpu, prompt, 24, tag);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, DeviceMapSplit, testing::Values("bundled", "llama"));

// The bundled model's greedy continuation with half its layers on the CPU equals transformers' tokens.
TEST(DeviceMap, BundledGreedyEqualsTransformers) {
  REQUIRE_GPU();
  const std::string exp_path = std::string(QTUNE_FIXTURES) + "/model/bundled_expected.json";
  if (!std::filesystem::exists(bundled() + "/config.json") || !std::filesystem::exists(exp_path))
    GTEST_SKIP() << "no bundled model";
  std::ifstream in(exp_path);
  nlohmann::json ex = nlohmann::json::parse(in);
  LlamaModel m = load_mapped(bundled(), splits(8)[0].second);
  std::vector<int32_t> want = ex["greedy"].get<std::vector<int32_t>>();
  GenerateOptions opt;
  opt.max_new_tokens = (int)want.size();
  GenerateResult r = generate(m, ex["prompt"].get<std::vector<int32_t>>(), opt);
  EXPECT_EQ(r.tokens, want);
}

// auto with a budget of the embedding plus three and a half layers: the embedding and layers 0-2 on the
// GPU, layers 3-7, the norm and the LM head on the CPU. With the default budget everything fits.
TEST(DeviceMap, AutoWithATinyBudgetSpillsTheLaterLayers) {
  REQUIRE_GPU();
  if (!std::filesystem::exists(bundled() + "/config.json")) GTEST_SKIP() << "no bundled model";
  ModuleSizes s = module_gpu_sizes(load_model_config(bundled()), LoadOptions{});
  LoadOptions opts;
  opts.device_map = parse_device_map("auto");
  opts.device_map.max_gpu_bytes = s.embed + 3 * s.layers[0] + s.layers[0] / 2;
  LlamaModel m = LlamaModel::load(bundled(), Device::CPU, opts);
  const DeviceMap& dm = m.device_map();
  std::printf("[ measured ] auto, %lld bytes: %s\n", (long long)opts.device_map.max_gpu_bytes,
              dm.describe().c_str());
  EXPECT_EQ(dm.describe(),
            "model.embed_tokens=cuda,model.layers.0-2=cuda,model.layers.3-7=cpu,model.norm=cpu,lm_head=cpu");
  KVCache cache = m.make_cache(1, 4);
  expect_placed(m, cache);
  LlamaModel cpu = LlamaModel::load(bundled(), Device::CPU), gpu = LlamaModel::load(bundled(), Device::CUDA);
  Tensor ids = random_ids(1, 16, m.config().vocab_size, 3);
  const std::vector<float> ref = cpu.forward(ids).to_f32_vector();
  EXPECT_LE(rel_err(m.forward(ids).to_f32_vector(), ref),
            2 * rel_err(gpu.forward(ids).to_f32_vector(), ref) + 1e-3);
  opts.device_map.max_gpu_bytes = 0;  // free memory minus the reserve: an 8M model fits
  LlamaModel all = LlamaModel::load(bundled(), Device::CPU, opts);
  EXPECT_FALSE(all.device_map().split());
  EXPECT_EQ(all.device(), Device::CUDA);
}

// --load-in-4bit with a split map: GPU layers quantized (NF4 storage on the GPU), CPU layers dense f32 as
// transformers' llm_int8_enable_fp32_cpu_offload keeps them. Reference: the CPU model with the same layers
// quantized (the quantization is bit-exact between CPU and GPU) and the rest f32; the split model's error
// against it stays within the bf16 rule.
TEST(DeviceMap, FourBitGpuLayersF32CpuLayers) {
  REQUIRE_GPU();
  if (!std::filesystem::exists(bundled() + "/config.json")) GTEST_SKIP() << "no bundled model";
  LoadOptions q;
  q.load_in_4bit = true;
  q.double_quant = true;
  LlamaModel m = load_mapped(bundled(), splits(8)[0].second, q);  // layers 0-3 GPU, 4-7 and head CPU
  for (int l = 0; l < 8; l++) {
    const LlamaLayer& L = m.layers()[l];
    if (l < 4) {
      ASSERT_TRUE(L.up.q4) << l;
      EXPECT_TRUE(L.up.q4->on_cuda()) << l;
    } else {
      EXPECT_FALSE(L.up.quantized()) << l;
      EXPECT_EQ(L.up.weight.dtype(), DType::F32) << l;
      EXPECT_EQ(L.up.weight.device(), Device::CPU) << l;
    }
  }
  LoadOptions ref_opts = q;
  ref_opts.skip_modules = {"lm_head", "model.layers.4", "model.layers.5", "model.layers.6", "model.layers.7"};
  LlamaModel ref_model = LlamaModel::load(bundled(), Device::CPU, ref_opts);
  LlamaModel cpu = LlamaModel::load(bundled(), Device::CPU), gpu = LlamaModel::load(bundled(), Device::CUDA);
  Tensor ids = random_ids(1, 16, m.config().vocab_size, 5);
  const std::vector<float> ref = ref_model.forward(ids).to_f32_vector();
  const double err = rel_err(m.forward(ids).to_f32_vector(), ref);
  const double decode_err = rel_err(chunked(m, ids), ref);
  const std::vector<float> f32 = cpu.forward(ids).to_f32_vector();
  const double bf16_err = rel_err(gpu.forward(ids).to_f32_vector(), f32);
  std::printf(
      "[ measured ] 4-bit split vs CPU reference (same layers quantized): forward %.3g, chunked decode "
      "%.3g; bf16 all-GPU vs f32 %.3g\n",
      err, decode_err, bf16_err);
  EXPECT_LE(err, 2 * bf16_err + 1e-3);
  EXPECT_LE(decode_err, 2 * bf16_err + 1e-3);
}
