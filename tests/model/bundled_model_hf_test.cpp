// The bundled model models/qtune-tiny-8m as a Hugging Face folder: its config (bf16, untied lm_head, GQA,
// RoPE in transformers 5's rope_parameters), its tokenizer (Llama-3-style byte-level BPE) against
// transformers' encodings, and the logits of its first 32 held-out positions (from BOS) against transformers
// in float32. Fixture: tests/fixtures/qtune-tiny-8m from tools/eval_bundled_model.py. (The greedy run and the
// speed print are in bundled_model_test.cpp.)
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/llama_model.h"
#include "model_test_util.h"
#include "tokenizer/tokenizer.h"

using namespace qtune;
using qtune_test::rel_err;

namespace {

std::string bundled_dir() {
  return std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";
}
std::string hf_fixture_dir() {
  return std::string(QTUNE_FIXTURES) + "/qtune-tiny-8m";
}

nlohmann::json hf_expected() {
  std::ifstream in(hf_fixture_dir() + "/expected.json");
  return nlohmann::json::parse(in);
}

Tensor hf_tensor(const std::string& name) {
  auto f = SafetensorsFile::open(hf_fixture_dir() + "/expected.safetensors");
  return f->get(name).clone();
}

}  // namespace

TEST(BundledModelHf, ConfigIsUntiedBf16Llama) {
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

TEST(BundledModelHf, TokenizerMatchesTransformers) {
  auto tok = Tokenizer::load(bundled_dir());
  nlohmann::json ex = hf_expected();
  for (const auto& e : ex["encodings"]) {
    std::string text = e["text"];
    EXPECT_EQ(tok->encode(text), e["ids"].get<std::vector<int32_t>>()) << text;
    EXPECT_EQ(tok->decode(e["ids"].get<std::vector<int32_t>>(), true), text);
  }
  // transformers' greedy continuation of "ROMEO:\n", decoded.
  EXPECT_EQ(tok->encode(ex["prompt_text"].get<std::string>()), ex["prompt"].get<std::vector<int32_t>>());
  EXPECT_EQ(tok->decode(ex["greedy"].get<std::vector<int32_t>>()), ex["greedy_text"].get<std::string>());
}

TEST(BundledModelHf, FirstPositionsLogitsMatchTransformers) {
  LlamaModel m = LlamaModel::load(bundled_dir());
  Tensor ids = hf_tensor("ids");      // I32 [1, 32]: BOS + the first 31 tokens of heldout.txt
  Tensor want = hf_tensor("logits");  // F32 [1, 32, 4096]
  double err = rel_err(m.forward(ids).to_f32_vector(), want.to_f32_vector());
  std::printf("[ measured ] qtune-tiny-8m logits (first 32 positions) vs transformers: relative error %.3g\n",
              err);
  EXPECT_LE(err, 1e-5);
}
