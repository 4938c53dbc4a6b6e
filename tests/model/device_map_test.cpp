// Device maps on the CPU (model/device_map.h): the flag and JSON syntaxes, their errors (unknown module,
// bad device, overlapping or reversed ranges, uncovered modules), memory sizes, the auto planner on given
// sizes, and loading with a map on a machine without a GPU. The split models themselves run in
// tests/model/cuda/device_map_test.cpp.
#include "model/device_map.h"

#include <fstream>

#include "core/allocator.h"
#include "io/hf_config.h"
#include "model/llama_model.h"
#include "model/load_options.h"
#include "model_test_util.h"

using namespace qtune;
using namespace qtune_test;

namespace {

DeviceMap resolve(const std::string& text, int layers) {
  return resolve_device_map(parse_device_map(text), layers);
}

void expect_map_error(const std::string& text, int layers, const std::vector<std::string>& parts) {
  expect_error([&] { resolve(text, layers); }, ErrorKind::Usage, parts);
}

}  // namespace

TEST(DeviceMapParse, ExplicitListByRanges) {
  DeviceMap m = resolve(
      "model.embed_tokens=cuda,model.layers.0-15=cuda,model.layers.16-31=cpu,model.norm=cpu,lm_head=cpu", 32);
  EXPECT_EQ(m.embed, Device::CUDA);
  ASSERT_EQ(m.layers.size(), 32u);
  for (int i = 0; i < 32; i++) EXPECT_EQ(m.layers[i], i < 16 ? Device::CUDA : Device::CPU) << i;
  EXPECT_EQ(m.norm, Device::CPU);
  EXPECT_EQ(m.lm_head, Device::CPU);
  EXPECT_TRUE(m.split());
  EXPECT_EQ(m.primary(), Device::CUDA);
  EXPECT_EQ(m.layers_on(Device::CPU), 16);
  EXPECT_EQ(
      m.describe(),
      "model.embed_tokens=cuda,model.layers.0-15=cuda,model.layers.16-31=cpu,model.norm=cpu,lm_head=cpu");
}

TEST(DeviceMapParse, SpacesDeviceSpellingsAndParents) {
  DeviceMap m = resolve(" model = CUDA:0 , lm_head = cpu ,", 4);  // "model": embedding, layers, norm
  EXPECT_EQ(m.embed, Device::CUDA);
  EXPECT_EQ(m.layers, std::vector<Device>(4, Device::CUDA));
  EXPECT_EQ(m.norm, Device::CUDA);
  EXPECT_EQ(m.lm_head, Device::CPU);
  m = resolve("model.embed_tokens=gpu,model.layers=cpu,model.norm=0,lm_head=cuda", 3);
  EXPECT_EQ(m.layers, std::vector<Device>(3, Device::CPU));
  EXPECT_EQ(m.norm, Device::CUDA);
  m = resolve("model.embed_tokens=cpu,model.layers.0=cpu,model.layers.1=cuda,model.norm=cuda,lm_head=cuda",
              2);
  EXPECT_EQ(m.layers, (std::vector<Device>{Device::CPU, Device::CUDA}));
  // Everything on one device is not a split.
  m = resolve("model=cpu,lm_head=cpu", 2);
  EXPECT_FALSE(m.split());
  EXPECT_EQ(m.primary(), Device::CPU);
  EXPECT_EQ(parse_device_map("auto").kind, DeviceMapSpec::Kind::Auto);
  EXPECT_EQ(parse_device_map(" AUTO ").kind, DeviceMapSpec::Kind::Auto);
}

TEST(DeviceMapParse, DescribeReadsBack) {
  DeviceMap m = DeviceMap::uniform(6, Device::CUDA);
  m.layers[1] = m.layers[2] = m.layers[5] = Device::CPU;
  m.lm_head = Device::CPU;
  const std::string d = m.describe();
  EXPECT_EQ(d,
            "model.embed_tokens=cuda,model.layers.0=cuda,model.layers.1-2=cpu,model.layers.3-4=cuda,"
            "model.layers.5=cpu,model.norm=cuda,lm_head=cpu");
  DeviceMap back = resolve(d, 6);
  EXPECT_EQ(back.layers, m.layers);
  EXPECT_EQ(back.lm_head, m.lm_head);
  EXPECT_EQ(back.embed, m.embed);
}

// HF's device_map dict: integers are GPU indices, strings devices; "" covers everything; rotary_emb ignored.
TEST(DeviceMapParse, HfJsonTextAndFile) {
  DeviceMap m = resolve(
      R"({"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "model.rotary_emb": 0,
          "model.norm": "cpu", "lm_head": "cuda:0"})",
      2);
  EXPECT_EQ(m.embed, Device::CUDA);
  EXPECT_EQ(m.layers, (std::vector<Device>{Device::CUDA, Device::CPU}));
  EXPECT_EQ(m.norm, Device::CPU);
  EXPECT_EQ(m.lm_head, Device::CUDA);
  const std::string path = temp_dir("dmap") + "/device_map.json";
  std::ofstream(path) << R"({"": "cpu"})";
  DeviceMapSpec s = parse_device_map(path);
  EXPECT_EQ(s.source, path);
  m = resolve_device_map(s, 3);
  EXPECT_EQ(m.layers, std::vector<Device>(3, Device::CPU));
  EXPECT_EQ(m.lm_head, Device::CPU);
  // Errors name the file and the key.
  std::ofstream(path) << R"({"model": 1, "lm_head": "cpu"})";
  expect_error([&] { parse_device_map(path); }, ErrorKind::Usage, {path, "\"model\"", "one GPU"});
  std::ofstream(path) << R"({"model": true})";
  expect_error([&] { parse_device_map(path); }, ErrorKind::Usage, {path, "\"model\"", "expected a device"});
  std::ofstream(path) << R"(["model"])";
  expect_error([&] { parse_device_map(path); }, ErrorKind::Usage, {path, "JSON object"});
  std::ofstream(path) << R"({"model": 0,)";
  expect_error([&] { parse_device_map(path); }, ErrorKind::Usage, {path, "malformed JSON"});
  expect_error([&] { parse_device_map("/no/such/map.json"); }, ErrorKind::Usage, {"/no/such/map.json"});
}

TEST(DeviceMapParse, UnknownModulesNamedWithTheValidOnes) {
  expect_map_error("model.layer.3=cpu,model=cuda,lm_head=cuda", 8,
                   {"--device-map", "unknown module \"model.layer.3\"", "model.layers.A-B", "lm_head"});
  expect_map_error("embed_tokens=cuda", 8, {"unknown module \"embed_tokens\""});
  expect_map_error("model.layers.3.mlp=cpu", 8,
                   {"\"model.layers.3.mlp\"", "finer than a decoder layer", "model.layers.3"});
  expect_map_error("model.layers.x=cpu", 8, {"\"model.layers.x\"", "not a layer index"});
  expect_map_error("model.layers.8=cpu", 8, {"layer 8 does not exist", "8 layers, 0-7"});
  expect_map_error("model.layers.2-9=cpu", 8, {"\"model.layers.2-9\"", "layer 9 does not exist"});
  expect_map_error("model.layers.5-2=cpu", 8,
                   {"\"model.layers.5-2\"", "starts after it ends", "model.layers.2-5"});
}

TEST(DeviceMapParse, BadDevicesAndSyntax) {
  expect_map_error("model=disk,lm_head=cpu", 2, {"\"model\"", "disk", "does not offload to disk"});
  expect_map_error("model=cuda:1,lm_head=cpu", 2, {"\"model\"", "cuda:1", "one GPU"});
  expect_map_error("model=tpu,lm_head=cpu", 2, {"unknown device \"tpu\"", "cpu, cuda"});
  expect_map_error("model.layers.0", 2, {"\"model.layers.0\"", "has no \"=device\""});
  expect_map_error("=cuda", 2, {"empty module name"});
  expect_map_error(",", 2, {"no module=device entries"});
  expect_map_error("balanced", 2, {"one GPU", "auto"});
  expect_error([] { parse_device_map("  "); }, ErrorKind::Usage, {"--device-map", "empty"});
}

TEST(DeviceMapParse, OverlapsAndGapsAreErrors) {
  expect_map_error(
      "model.layers.0-15=cuda,model.layers.10-31=cpu,model.embed_tokens=cuda,model.norm=cpu,"
      "lm_head=cpu",
      32, {"\"model.layers.0-15\" and \"model.layers.10-31\" overlap", "model.layers.10"});
  expect_map_error("model=cuda,model.norm=cpu,lm_head=cpu", 4, {"\"model\" and \"model.norm\" overlap"});
  expect_map_error("model.layers.3=cpu,model.layers.3=cpu,model=cuda", 4, {"overlap", "model.layers.3"});
  expect_map_error("model.embed_tokens=cuda,model.layers.0-9=cuda,model.layers.12-29=cpu", 32,
                   {"no device for", "model.layers.10-11", "model.layers.30-31", "model.norm", "lm_head"});
}

TEST(DeviceMapParse, MemorySizes) {
  EXPECT_EQ(parse_memory_size("20GiB", "--max-gpu-memory"), 20LL << 30);
  EXPECT_EQ(parse_memory_size("20GB", "--max-gpu-memory"), 20000000000LL);
  EXPECT_EQ(parse_memory_size("1.5gib", "--max-gpu-memory"), 3LL << 29);
  EXPECT_EQ(parse_memory_size("512 MiB", "--max-gpu-memory"), 512LL << 20);
  EXPECT_EQ(parse_memory_size("123", "--max-gpu-memory"), 123);
  EXPECT_EQ(parse_memory_size("4KB", "--max-gpu-memory"), 4000);
  for (const char* bad : {"", "GiB", "20XB", "-1GiB", "0", "1.2.3GiB", "1e3"})
    expect_error([&] { parse_memory_size(bad, "--max-gpu-memory"); }, ErrorKind::Usage,
                 {"--max-gpu-memory", "not a memory size"});
}

// The planner fills the GPU in module order and spills everything after the first module that does not fit.
TEST(DeviceMapAuto, FillsInOrderThenSpills) {
  ModuleSizes s;
  s.embed = 100;
  s.layers = {10, 10, 10, 10};
  s.norm = 1;
  s.lm_head = 100;
  DeviceMap m = plan_auto_device_map(s, 125);  // embedding + 2 layers
  EXPECT_EQ(m.embed, Device::CUDA);
  EXPECT_EQ(m.layers, (std::vector<Device>{Device::CUDA, Device::CUDA, Device::CPU, Device::CPU}));
  EXPECT_EQ(m.norm, Device::CPU);
  EXPECT_EQ(m.lm_head, Device::CPU);
  m = plan_auto_device_map(s, 141);  // all layers and the norm; the LM head does not fit
  EXPECT_EQ(m.layers_on(Device::CPU), 0);
  EXPECT_EQ(m.norm, Device::CUDA);
  EXPECT_EQ(m.lm_head, Device::CPU);
  m = plan_auto_device_map(s, 1000);
  EXPECT_FALSE(m.split());
  EXPECT_EQ(m.primary(), Device::CUDA);
  m = plan_auto_device_map(s, 50);  // not even the embedding: all on the CPU
  EXPECT_EQ(m.primary(), Device::CPU);
  EXPECT_EQ(m.layers_on(Device::CPU), 4);
  s.lm_head_tied = true;  // a tied head costs nothing beside the embedding
  m = plan_auto_device_map(s, 141);
  EXPECT_EQ(m.lm_head, Device::CUDA);
}

TEST(DeviceMapAuto, ModuleSizesFollowTheStorage) {
  ModelConfig cfg = load_model_config(std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m");
  const int64_t C = 256, F = 704, V = 4096, q = 256 * 256, kv = 128 * 256;
  LoadOptions opts;
  ModuleSizes s = module_gpu_sizes(cfg, opts);
  EXPECT_EQ(s.embed, 2 * V * C);
  EXPECT_EQ(s.lm_head, 2 * V * C);
  EXPECT_EQ(s.norm, 2 * C);
  ASSERT_EQ(s.layers.size(), 8u);
  EXPECT_EQ(s.layers[0], 2 * (2 * C + 2 * q + 2 * kv + 3 * F * C));
  opts.load_in_4bit = true;  // nibbles + an f32 absmax per 64 weights; lm_head skipped (dense)
  ModuleSizes s4 = module_gpu_sizes(cfg, opts);
  EXPECT_EQ(s4.layers[0], 4 * C + (2 * q + 2 * kv + 3 * F * C) / 2 + (2 * q + 2 * kv + 3 * F * C) / 64 * 4);
  EXPECT_EQ(s4.lm_head, s.lm_head);
}

// Without a GPU: an all-CPU map loads the plain CPU model, auto falls back to the CPU (as accelerate does),
// and a map that names cuda says there is no GPU.
TEST(DeviceMapLoad, CpuMachine) {
  if (cuda_available()) GTEST_SKIP() << "checks the no-GPU behaviour";
  const std::string dir = fixture("llama");
  LlamaModel plain = LlamaModel::load(dir, Device::CPU);
  Tensor ids = expected_tensor("llama", "ids");
  std::vector<float> want = plain.forward(ids).to_f32_vector();
  for (const char* map : {"model=cpu,lm_head=cpu", "auto"}) {
    LoadOptions opts;
    opts.device_map = parse_device_map(map);
    LlamaModel m = LlamaModel::load(dir, Device::CUDA, opts);  // the device argument is not used
    EXPECT_EQ(m.device(), Device::CPU) << map;
    EXPECT_FALSE(m.device_map().split()) << map;
    EXPECT_EQ(m.forward(ids).to_f32_vector(), want) << map;
  }
  LoadOptions opts;
  opts.device_map = parse_device_map(
      "model.layers.1=cuda,model.embed_tokens=cpu,model.layers.0=cpu,"
      "model.norm=cpu,lm_head=cpu");
  expect_error([&] { LlamaModel::load(dir, Device::CPU, opts); }, ErrorKind::Unsupported,
               {"--device-map", "no usable GPU"});
}
