// The bundled pretrained model (models/qtune-tiny-8m, BF16, 8 layers) against transformers' f32
// forward: logits of the last 8 of 96 held-out tokens and a 32-token greedy run; plus a CPU speed print.
// The fixture records the weights' checksum: after retraining, rerun tools/make_model_fixtures.py.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "model/generate.h"
#include "model/llama_model.h"
#include "model_test_util.h"
#include "ops/cpu/cpu_ops.h"

using namespace qtune;
using namespace qtune_test;

static const std::string kModel = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";

static nlohmann::json bundled_expected() {
  std::ifstream in(fixture("bundled_expected.json"));
  nlohmann::json ex = nlohmann::json::parse(in);
  std::ifstream w(kModel + "/model.safetensors", std::ios::binary);
  std::vector<char> raw((std::istreambuf_iterator<char>(w)), std::istreambuf_iterator<char>());
  raw.resize((raw.size() + 3) / 4 * 4, 0);
  uint64_t sum = 0;
  for (size_t i = 0; i < raw.size(); i += 4) {
    uint32_t word;
    std::memcpy(&word, raw.data() + i, 4);
    sum += word;
  }
  EXPECT_EQ(sum, ex["weights_u32_sum"].get<uint64_t>())
      << kModel << " changed since the fixture was made: rerun tools/make_model_fixtures.py";
  return ex;
}

TEST(BundledModel, LogitsAndGreedyMatchTransformers) {
  nlohmann::json ex = bundled_expected();
  LlamaModel m = LlamaModel::load(kModel);
  auto st = SafetensorsFile::open(fixture("bundled_expected.safetensors"));
  Tensor ids = st->get("ids").clone();           // [1, 96]
  Tensor want = st->get("last_logits").clone();  // [1, 8, V]
  KVCache cache = m.make_cache(1, ids.size(1));
  int64_t T = ids.size(1), V = m.config().vocab_size;
  std::vector<float> got = m.forward(ids, cache, 0).to_f32_vector();
  double err = rel_err(std::vector<float>(got.end() - 8 * V, got.end()), want.to_f32_vector());
  std::printf("[ measured ] bundled model logits (last 8 of %lld): relative error %.3g\n", (long long)T, err);
  EXPECT_LE(err, 1e-4);

  GenerateOptions opt;
  opt.max_new_tokens = 32;
  opt.eos_token_ids = {1};
  std::vector<int32_t> prompt = ex["prompt"].get<std::vector<int32_t>>();
  GenerateResult r = generate(m, prompt, opt);
  EXPECT_EQ(r.tokens, ex["greedy"].get<std::vector<int32_t>>());
  std::printf(
      "[ measured ] bundled model on %d CPU threads: prefill %zu tokens %.1f ms, decode %.0f tokens/s\n",
      cpu::num_threads(), prompt.size(), r.prefill_seconds * 1e3,
      (r.tokens.size() - 1) / std::max(r.decode_seconds, 1e-9));
}
