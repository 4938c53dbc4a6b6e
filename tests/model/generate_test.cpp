// Generation against transformers' greedy generate() (token for token), EOS from generation_config.json,
// streaming callbacks, and generation_config.json parsing.
#include "model/generate.h"

#include <filesystem>

#include "model/generation_config.h"
#include "model_test_util.h"

using namespace qtune;
using namespace qtune_test;

static std::vector<int32_t> ints(const nlohmann::json& j) {
  return j.get<std::vector<int32_t>>();
}

TEST(Generate, GreedyMatchesTransformers) {
  for (std::string name : {"llama", "llama_bias", "mistral", "qwen2"}) {
    LlamaModel m = LlamaModel::load(fixture(name));
    nlohmann::json ex = expected_json(name);
    GenerateOptions opt;
    opt.max_new_tokens = ex["max_new_tokens"];
    opt.eos_token_ids = {ex["eos_token_id"].get<int>()};
    GenerateResult r = generate(m, ints(ex["prompt"]), opt);
    EXPECT_EQ(r.tokens, ints(ex["greedy"])) << name;
    EXPECT_EQ(r.stop, StopReason::MaxNewTokens) << name;
  }
}

TEST(Generate, StopsAtEosFromGenerationConfig) {
  LlamaModel m = LlamaModel::load(fixture("qwen2"));
  nlohmann::json ex = expected_json("qwen2");
  GenerationConfig gc = load_generation_config(fixture("qwen2"), m.config());
  EXPECT_TRUE(gc.from_file);
  EXPECT_EQ(gc.eos_token_ids, ex["eos_ids"].get<std::vector<int>>());
  GenerateOptions opt;
  opt.max_new_tokens = ex["max_new_tokens"];
  opt.eos_token_ids = gc.eos_token_ids;
  GenerateResult r = generate(m, ints(ex["prompt"]), opt);
  EXPECT_EQ(r.tokens, ints(ex["eos_greedy"]));  // ends with the EOS token, as HF's output does
  EXPECT_EQ(r.stop, StopReason::Eos);
}

TEST(Generate, StreamsEveryTokenAndStopsOnRequest) {
  LlamaModel m = LlamaModel::load(fixture("llama"));
  nlohmann::json ex = expected_json("llama");
  std::vector<int32_t> seen;
  GenerateOptions opt;
  opt.max_new_tokens = 20;
  opt.on_token = [&](int32_t t) {
    seen.push_back(t);
    return seen.size() < 6;
  };
  GenerateResult r = generate(m, ints(ex["prompt"]), opt);
  EXPECT_EQ(r.stop, StopReason::Callback);
  EXPECT_EQ(seen, r.tokens);
  std::vector<int32_t> greedy = ints(ex["greedy"]);
  EXPECT_EQ(r.tokens, std::vector<int32_t>(greedy.begin(), greedy.begin() + 6));
}

TEST(Generate, SeededSamplingIsReproducible) {
  LlamaModel m = LlamaModel::load(fixture("llama"));
  GenerateOptions opt;
  opt.max_new_tokens = 15;
  opt.sampling = {1.0f, 40, 0.95f, 1234};
  std::vector<int32_t> prompt = {5, 6, 7};
  GenerateResult a = generate(m, prompt, opt), b = generate(m, prompt, opt);
  EXPECT_EQ(a.tokens, b.tokens);
  opt.sampling.seed = 99;
  GenerateResult c = generate(m, prompt, opt);
  EXPECT_NE(a.tokens,
            c.tokens);  // 15 draws from a 40-token candidate set: a collision is astronomically rare
}

TEST(Generate, ContextLimitAndBadPrompt) {
  LlamaModel m = LlamaModel::load(fixture("llama"));  // max_position_embeddings 512
  GenerateOptions opt;
  opt.max_new_tokens = 100;
  std::vector<int32_t> prompt(500, 3);
  GenerateResult r = generate(m, prompt, opt);
  EXPECT_EQ(r.stop, StopReason::ContextFull);
  EXPECT_EQ(r.tokens.size(), 12u);
  expect_error([&] { generate(m, {}, opt); }, ErrorKind::Usage, {"no tokens"});
  expect_error([&] { generate(m, {1, 999}, opt); }, ErrorKind::Shape, {"token id 999"});
}

TEST(GenerationConfig, FallsBackToConfigAndRejectsBadJson) {
  ModelConfig cfg = load_model_config(fixture("llama"));
  GenerationConfig g = load_generation_config(fixture("llama"), cfg);
  EXPECT_FALSE(g.from_file);
  EXPECT_EQ(g.eos_token_ids, std::vector<int>{381});
  EXPECT_EQ(g.top_k, 50);
  std::string dir = temp_dir("genconfig");
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": 7, "temperature": 0.6, "top_p": 0.9,
    "do_sample": true})";
  g = load_generation_config(dir, cfg);
  EXPECT_EQ(g.eos_token_ids, std::vector<int>{7});
  EXPECT_FLOAT_EQ(g.temperature, 0.6f);
  EXPECT_FLOAT_EQ(g.top_p, 0.9f);
  EXPECT_TRUE(g.do_sample);
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": "x"})";
  expect_error([&] { load_generation_config(dir, cfg); }, ErrorKind::Config,
               {"generation_config.json", "eos_token_id"});
  std::ofstream(dir + "/generation_config.json") << "{";
  expect_error([&] { load_generation_config(dir, cfg); }, ErrorKind::Config,
               {"generation_config.json", "invalid JSON"});
}
