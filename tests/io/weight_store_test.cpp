// WeightStore: a sharded transformers checkpoint (tests/fixtures/io/tiny_llama, saved by
// save_pretrained with an index), single-file folders and paths, lazy shard opening, and index errors.
#include <filesystem>
#include <thread>

#include "io/json_util.h"
#include "io/safetensors.h"
#include "io_test_util.h"

using namespace qtune;
using namespace qtune_test;
namespace fs = std::filesystem;

namespace {

const std::string kTiny = QTUNE_FIXTURES "/io/tiny_llama";

nlohmann::json expected_tiny() {
  return nlohmann::json::parse(read_bytes(kTiny + "/expected.json"));
}

TEST(WeightStore, ShardedFolderMatchesTransformers) {
  WeightStore ws = WeightStore::open(kTiny);
  nlohmann::json want = expected_tiny();
  EXPECT_EQ(ws.open_shard_count(), 0u);  // nothing mapped until a tensor is asked for
  std::vector<std::string> names = ws.names();
  ASSERT_EQ(names.size(), want.size());
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  for (const std::string& n : names) {
    SCOPED_TRACE(n);
    const auto& w = want[n];
    EXPECT_EQ(fs::path(ws.file_of(n)).filename().string(), w["file"].get<std::string>());
    Tensor t = ws.get(n);
    EXPECT_EQ(t.dtype(), DType::BF16);
    EXPECT_EQ(t.shape(), w["shape"].get<Shape>());
    std::vector<float> v = t.to_f32_vector();
    double sum = 0;
    for (float x : v) sum += x;
    EXPECT_EQ(v[0], w["first"].get<float>());
    // transformers sums in f32; ours in f64: allow f32 summation error.
    EXPECT_NEAR(sum, w["sum"].get<double>(), 1e-5 * (1 + std::abs(sum)));
  }
  EXPECT_EQ(ws.open_shard_count(), 2u);
}

TEST(WeightStore, LazyShardsAndOtherPaths) {
  WeightStore ws = WeightStore::open(kTiny);
  EXPECT_EQ(ws.info("model.embed_tokens.weight").shape, (Shape{64, 16}));
  EXPECT_EQ(ws.open_shard_count(), 1u);  // only the shard holding it
  // The index path itself, and one shard file on its own.
  WeightStore by_index = WeightStore::open(kTiny + "/model.safetensors.index.json");
  EXPECT_EQ(by_index.names(), ws.names());
  WeightStore one = WeightStore::open(kTiny + "/model-00002-of-00002.safetensors");
  EXPECT_TRUE(one.has("lm_head.weight"));
  EXPECT_FALSE(one.has("model.embed_tokens.weight"));
  // A folder with model.safetensors.
  TempDir dir;
  write_safetensors(dir.file("model.safetensors"), {{"w", Tensor::from_f32({1, 2, 3, 4}, {2, 2})}});
  WeightStore single = WeightStore::open(dir.path());
  EXPECT_EQ(single.names(), std::vector<std::string>{"w"});
  EXPECT_EQ(single.get("w").to_f32_vector(), (std::vector<float>{1, 2, 3, 4}));
  std::string msg = error_of([&] { single.get("lm_head.weight"); }, ErrorKind::Format);
  EXPECT_HAS(msg, "no tensor named 'lm_head.weight'");
  EXPECT_HAS(msg, dir.path());
}

TEST(WeightStore, ConcurrentFirstUse) {
  WeightStore ws = WeightStore::open(kTiny);
  std::vector<std::string> names = ws.names();
  std::vector<std::thread> threads;
  std::vector<double> sums(4, 0.0);
  for (int k = 0; k < 4; k++)
    threads.emplace_back([&, k] {
      for (const std::string& n : names)
        for (float x : ws.get(n).to_f32_vector()) sums[k] += x;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ws.open_shard_count(), 2u);
  for (int k = 1; k < 4; k++) EXPECT_EQ(sums[k], sums[0]);
}

// A copy of the tiny checkpoint with a rewritten index.
struct Broken {
  TempDir dir;
  explicit Broken(const std::string& index_text) {
    for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})
      fs::copy_file(kTiny + "/" + f, dir.file(f));
    write_bytes(dir.file("model.safetensors.index.json"), index_text);
  }
  std::string index() const { return dir.file("model.safetensors.index.json"); }
};

TEST(WeightStore, IndexErrors) {
  {
    Broken b("{\"weight_map\": {\n  \"a\": \"model-00001-of-00002.safetensors\",,\n}}");
    std::string msg = error_of([&] { WeightStore::open(b.dir.path()); }, ErrorKind::Format);
    EXPECT_HAS(msg, b.index());
    EXPECT_HAS(msg, "malformed JSON");
    EXPECT_HAS(msg, "line 2");
  }
  {
    Broken b(R"({"metadata": {}})");
    std::string msg = error_of([&] { WeightStore::open(b.dir.path()); }, ErrorKind::Format);
    EXPECT_HAS(msg, b.index());
    EXPECT_HAS(msg, "missing field 'weight_map'");
  }
  {
    Broken b(R"({"weight_map": ["a", "b"]})");
    std::string msg = error_of([&] { WeightStore::open(b.dir.path()); }, ErrorKind::Format);
    EXPECT_HAS(msg, "'weight_map' must be an object");
    EXPECT_HAS(msg, "got array");
  }
  {
    Broken b(R"({"weight_map": {"lm_head.weight": 2}})");
    std::string msg = error_of([&] { WeightStore::open(b.dir.path()); }, ErrorKind::Format);
    EXPECT_HAS(msg, "entry for tensor 'lm_head.weight' must be a shard file name");
  }
  {
    Broken b(R"({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors",
                                "model.norm.weight": "model-00003-of-00003.safetensors"}})");
    std::string msg = error_of([&] { WeightStore::open(b.dir.path()); }, ErrorKind::Format);
    EXPECT_HAS(msg, "shard file 'model-00003-of-00003.safetensors'");
    EXPECT_HAS(msg, "tensor 'model.norm.weight'");
    EXPECT_HAS(msg, "does not exist");
  }
  {
    // The index names a tensor the shard lacks: found when the shard is opened.
    Broken b(R"({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors",
                                "model.layers.9.mlp.up_proj.weight": "model-00002-of-00002.safetensors"}})");
    WeightStore ws = WeightStore::open(b.dir.path());
    EXPECT_TRUE(ws.has("model.layers.9.mlp.up_proj.weight"));
    std::string msg = error_of([&] { ws.get("lm_head.weight"); }, ErrorKind::Format);
    EXPECT_HAS(msg, "tensor 'model.layers.9.mlp.up_proj.weight'");
    EXPECT_HAS(msg, "model-00002-of-00002.safetensors");
    EXPECT_HAS(msg, "that shard has no such tensor");
  }
  {
    TempDir empty;
    std::string msg = error_of([&] { WeightStore::open(empty.path()); }, ErrorKind::Format);
    EXPECT_HAS(msg, empty.path());
    EXPECT_HAS(msg, "model.safetensors or model.safetensors.index.json");
  }
  std::string msg = error_of([&] { WeightStore::open("/nonexistent/qtune/model"); }, ErrorKind::Io);
  EXPECT_HAS(msg, "/nonexistent/qtune/model");
}

}  // namespace
