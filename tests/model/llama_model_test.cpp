// LlamaModel on the CPU against Hugging Face transformers (fixtures from tools/make_model_fixtures.py):
// logits for Llama (GQA, llama3 rope), Mistral (linear rope), Qwen2 (biases, tied head) and a BF16
// checkpoint; batch 2; KV-cache decoding equal to the full forward; thread-count independence.
#include "model/llama_model.h"

#include <cstdio>

#include "model_test_util.h"
#include "ops/cpu/cpu_ops.h"

using namespace qtune;
using namespace qtune_test;

class HfLogits : public testing::TestWithParam<std::string> {};

TEST_P(HfLogits, MatchTransformersF32) {
  std::string name = GetParam();
  LlamaModel m = LlamaModel::load(fixture(name));
  EXPECT_TRUE(m.unused_tensors().empty());
  for (const char* which : {"", "batch_"}) {
    Tensor ids = expected_tensor(name, std::string(which) + "ids");
    Tensor want = expected_tensor(name, std::string(which) + "logits");
    Tensor got = m.forward(ids);
    ASSERT_EQ(got.shape(), want.shape());
    double err = rel_err(got.to_f32_vector(), want.to_f32_vector());
    std::printf("[ measured ] %s %slogits %s: relative error %.3g\n", name.c_str(), which,
                shape_str(got.shape()).c_str(), err);
    EXPECT_LE(err, 1e-4) << name << " " << which;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfLogits,
                         testing::Values("llama", "llama_bf16", "llama_bias", "mistral", "qwen2"));

TEST(LlamaModel, ConfigAndTiedHead) {
  LlamaModel q = LlamaModel::load(fixture("qwen2"));
  EXPECT_EQ(q.config().architecture, "Qwen2ForCausalLM");
  EXPECT_TRUE(q.config().tie_word_embeddings);
  EXPECT_EQ(q.lm_head().weight.raw(), q.embed_tokens().raw());  // shared, not copied
  EXPECT_TRUE(q.layers()[0].q.bias.defined());
  EXPECT_FALSE(q.layers()[0].o.bias.defined());
  LlamaModel l = LlamaModel::load(fixture("llama"));
  EXPECT_NE(l.lm_head().weight.raw(), l.embed_tokens().raw());
  EXPECT_FALSE(l.layers()[1].q.bias.defined());
  EXPECT_EQ(l.activation_dtype(), DType::F32);
  EXPECT_EQ(l.layers()[0].q.weight.dtype(), DType::F32);
  LlamaModel b = LlamaModel::load(fixture("llama_bf16"));
  EXPECT_EQ(b.layers()[0].q.weight.dtype(), DType::F32);    // converted at load on the CPU
  LlamaModel lb = LlamaModel::load(fixture("llama_bias"));  // attention_bias: q, k, v and o; mlp_bias
  for (const Linear* lin : {&lb.layers()[1].q, &lb.layers()[1].k, &lb.layers()[1].v, &lb.layers()[1].o,
                            &lb.layers()[1].gate, &lb.layers()[1].up, &lb.layers()[1].down})
    EXPECT_TRUE(lin->bias.defined()) << lin->name;
}

// Prefill a few tokens, then decode one at a time and in chunks: every step's logits must equal the
// full-sequence forward's rows.
TEST(LlamaModel, KvCacheDecodeEqualsFullForward) {
  for (std::string name : {"llama", "qwen2", "mistral"}) {
    LlamaModel m = LlamaModel::load(fixture(name));
    Tensor ids = expected_tensor(name, "ids");  // [1, 40]
    int64_t T = ids.size(1), V = m.config().vocab_size;
    std::vector<float> full = m.forward(ids).to_f32_vector();  // [T, V]
    KVCache cache = m.make_cache(1, T);
    std::vector<int64_t> chunks = {5, 1, 1, 1, 3, 1, 7};
    int64_t pos = 0;
    double worst = 0;
    for (size_t c = 0; pos < T; c++) {
      int64_t len = c < chunks.size() ? chunks[c] : 1;
      len = std::min(len, T - pos);
      std::vector<int32_t> part(ids.data<int32_t>() + pos, ids.data<int32_t>() + pos + len);
      std::vector<float> got = m.forward(Tensor::from_i32(part, {1, len}), cache, pos).to_f32_vector();
      std::vector<float> want(full.begin() + pos * V, full.begin() + (pos + len) * V);
      worst = std::max(worst, rel_err(got, want));
      // last_only gives the chunk's final row. (Recomputing the chunk rewrites the same cache rows.)
      std::vector<float> last = m.forward(Tensor::from_i32(part, {1, len}), cache, pos, true).to_f32_vector();
      EXPECT_LE(rel_err(last, std::vector<float>(want.end() - V, want.end())), 1e-6);
      pos += len;
    }
    std::printf("[ measured ] %s: KV-cache decode vs full forward, worst relative error %.3g\n", name.c_str(),
                worst);
    EXPECT_LE(worst, 1e-5) << name;
  }
}

TEST(LlamaModel, BatchLastOnlyRows) {
  LlamaModel m = LlamaModel::load(fixture("llama"));
  Tensor ids = expected_tensor("llama", "batch_ids");  // [2, 13]
  std::vector<float> full = m.forward(ids).to_f32_vector();
  KVCache cache = m.make_cache(2, 13);
  std::vector<float> last = m.forward(ids, cache, 0, true).to_f32_vector();  // [2, 1, V]
  int64_t V = m.config().vocab_size;
  for (int b = 0; b < 2; b++) {
    std::vector<float> want(full.begin() + (b * 13 + 12) * V, full.begin() + (b * 13 + 13) * V);
    EXPECT_LE(rel_err(std::vector<float>(last.begin() + b * V, last.begin() + (b + 1) * V), want), 1e-6);
  }
}

TEST(LlamaModel, ThreadCountDoesNotChangeResults) {
  LlamaModel m = LlamaModel::load(fixture("mistral"));
  Tensor ids = expected_tensor("mistral", "ids");
  int nt = cpu::num_threads();
  std::vector<float> a = m.forward(ids).to_f32_vector();
  cpu::set_num_threads(1);
  std::vector<float> b = m.forward(ids).to_f32_vector();
  cpu::set_num_threads(nt);
  EXPECT_LE(rel_err(a, b), 1e-6);
  EXPECT_EQ(a, m.forward(ids).to_f32_vector());  // same threads: bit-reproducible
}

TEST(LlamaModel, ForwardArgumentErrors) {
  LlamaModel m = LlamaModel::load(fixture("llama"));
  KVCache cache = m.make_cache(1, 8);
  Tensor ids = Tensor::from_i32({1, 2, 3, 4, 5}, {1, 5});
  expect_error([&] { m.forward(ids, cache, 4); }, ErrorKind::Shape, {"positions [4, 9)", "8 positions"});
  Tensor bad = Tensor::from_i32({1, 384}, {1, 2});
  expect_error([&] { m.forward(bad); }, ErrorKind::Shape, {"token id 384", "[0, 384)"});
  KVCache c2 = m.make_cache(2, 8);
  expect_error([&] { m.forward(ids, c2, 0); }, ErrorKind::Shape, {"batch 2", "batch 1"});
}
