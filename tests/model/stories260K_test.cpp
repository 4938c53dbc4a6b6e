// stories260K, a real pretrained llama2.c model (TinyStories), converted to an HF folder by
// tools/convert_llama2c.py (which checks transformers against a float64 llama2.c forward, rel err ~2e-6).
// Here qtune must match transformers on that folder: the config (tied, GQA 8/4, head_dim 8), the logits of a
// 48-token sequence, the greedy continuation, and the KV-cache decode path, all on real (not random) weights.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/generate.h"
#include "model/llama_model.h"
#include "model_test_util.h"

using namespace qtune;
using qtune_test::rel_err;

namespace {

std::string stories_dir() {
  return std::string(QTUNE_FIXTURES) + "/stories260K";
}

nlohmann::json stories_expected() {
  std::ifstream in(stories_dir() + "/expected.json");
  return nlohmann::json::parse(in);
}

Tensor stories_tensor(const std::string& name) {
  auto f = SafetensorsFile::open(stories_dir() + "/expected.safetensors");
  return f->get(name).clone();
}

}  // namespace

TEST(Stories260K, ConfigIsTiedGqaLlama) {
  ModelConfig c = load_model_config(stories_dir());
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{2});
}

TEST(Stories260K, LogitsMatchTransformers) {
  LlamaModel m = LlamaModel::load(stories_dir());
  Tensor ids = stories_tensor("ids");      // I32 [1, 48]
  Tensor want = stories_tensor("logits");  // F32 [1, 48, 512]
  ASSERT_EQ(ids.size(1), 48);
  double err = rel_err(m.forward(ids).to_f32_vector(), want.to_f32_vector());
  std::printf("[ measured ] stories260K logits vs transformers: relative error %.3g\n", err);
  EXPECT_LE(err, 1e-5);
}

TEST(Stories260K, GreedyMatchesTransformers) {
  LlamaModel m = LlamaModel::load(stories_dir());
  nlohmann::json ex = stories_expected();
  GenerateOptions opt;
  opt.max_new_tokens = ex["max_new_tokens"];
  opt.eos_token_ids = {ex["eos_token_id"].get<int>()};
  GenerateResult r = generate(m, ex["prompt"].get<std::vector<int32_t>>(), opt);
  EXPECT_EQ(r.tokens, ex["greedy"].get<std::vector<int32_t>>());
  EXPECT_EQ(r.stop, StopReason::MaxNewTokens);
}

// Prefill 9 tokens, then decode in uneven chunks: each chunk's logits equal transformers' rows.
TEST(Stories260K, KvCacheDecodeMatchesTransformers) {
  LlamaModel m = LlamaModel::load(stories_dir());
  Tensor ids = stories_tensor("ids");                                  // [1, 48]
  std::vector<float> want = stories_tensor("logits").to_f32_vector();  // [48 * 512]
  int64_t T = ids.size(1), V = 512;
  KVCache cache = m.make_cache(1, T);
  std::vector<int64_t> chunks = {9, 1, 1, 4, 1, 16};
  int64_t pos = 0;
  double worst = 0;
  for (size_t c = 0; pos < T; c++) {
    int64_t len = std::min(c < chunks.size() ? chunks[c] : 1, T - pos);
    std::vector<int32_t> part(ids.data<int32_t>() + pos, ids.data<int32_t>() + pos + len);
    std::vector<float> got = m.forward(Tensor::from_i32(part, {1, len}), cache, pos).to_f32_vector();
    std::vector<float> rows(want.begin() + pos * V, want.begin() + (pos + len) * V);
    worst = std::max(worst, rel_err(got, rows));
    pos += len;
  }
  std::printf("[ measured ] stories260K KV-cache decode vs transformers: worst relative error %.3g\n", worst);
  EXPECT_LE(worst, 2e-5);  // single-row chunks: f32 sums in another order than the full forward
}
