// The bundled model models/qtune-tiny-8m (8M-parameter Llama, bf16, untied lm_head, made by
// tools/train_bundled_*.py) against transformers (fixture tests/fixtures/qtune-tiny-8m from
// tools/eval_bundled_model.py): config, tokenizer encodings, logits on held-out text, greedy continuation.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/generate.h"
#include "model/llama_model.h"
#include "model_test_util.h"
#include "tokenizer/tokenizer.h"

using namespace qtune;
using qtune_test::rel_err;

namespace {

std::string bundled_dir() {
  return std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";
}
std::string fixture_dir() {
  return std::string(QTUNE_FIXTURES) + "/qtune-tiny-8m";
}

nlohmann::json bundled_expected() {
  std::ifstream in(fixture_dir() + "/expected.json");
  return nlohmann::json::parse(in);
}

Tensor bundled_tensor(const std::string& name) {
  auto f = SafetensorsFile::open(fixture_dir() + "/expected.safetensors");
  return f->get(name).clone();
}

}  // namespace

TEST(BundledModel, ConfigIsUntiedBf16Llama) {
  ModelConfig c = load_model_config(bundled_dir());
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.intermediate_size, 704);
  EXPECT_EQ(c.num_hidden_layers, 8);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.vocab_size, 4096);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{1});
}

TEST(BundledModel, TokenizerMatchesTransformers) {
  auto tok = Tokenizer::load(bundled_dir());
  for (const auto& e : bundled_expected()["encodings"]) {
    std::string text = e["text"];
    EXPECT_EQ(tok->encode(text), e["ids"].get<std::vector<int32_t>>()) << text;
    EXPECT_EQ(tok->decode(e["ids"].get<std::vector<int32_t>>(), true), text);
  }
}

TEST(BundledModel, LogitsMatchTransformers) {
  LlamaModel m = LlamaModel::load(bundled_dir());
  Tensor ids = bundled_tensor("ids");      // I32 [1, 32], held-out text
  Tensor want = bundled_tensor("logits");  // F32 [1, 32, 4096]
  double err = rel_err(m.forward(ids).to_f32_vector(), want.to_f32_vector());
  std::printf("[ measured ] qtune-tiny-8m logits vs transformers: relative error %.3g\n", err);
  EXPECT_LE(err, 1e-5);
}

TEST(BundledModel, GreedyMatchesTransformers) {
  LlamaModel m = LlamaModel::load(bundled_dir());
  nlohmann::json ex = bundled_expected();
  GenerateOptions opt;
  opt.max_new_tokens = ex["max_new_tokens"];
  opt.eos_token_ids = {ex["eos_token_id"].get<int>()};
  GenerateResult r = generate(m, ex["prompt"].get<std::vector<int32_t>>(), opt);
  EXPECT_EQ(r.tokens, ex["greedy"].get<std::vector<int32_t>>());
  auto tok = Tokenizer::load(bundled_dir());
  EXPECT_EQ(tok->decode(r.tokens), ex["greedy_text"].get<std::string>());
}
