// config.json parsing: each fixture under tests/fixtures/io/configs must resolve to what transformers
// resolves (configs/expected.json, written by tools/make_io_fixtures.py: defaults, head_dim, rope, biases
// read off the instantiated model), and every kind of bad config must fail naming the file and field.
#include "io/hf_config.h"

#include "io/json_util.h"
#include "io_test_util.h"

using namespace qtune;
using namespace qtune_test;

namespace {

const std::string kConfigs = QTUNE_FIXTURES "/io/configs";

TEST(HfConfig, MatchesTransformersResolution) {
  auto expected = nlohmann::json::parse(read_bytes(kConfigs + "/expected.json"));
  ASSERT_GE(expected.size(), 6u);
  for (auto it = expected.begin(); it != expected.end(); ++it) {
    SCOPED_TRACE(it.key());
    const auto& w = it.value();
    ModelConfig c = load_model_config(kConfigs + "/" + it.key());
    EXPECT_EQ(c.architecture, w["architecture"].get<std::string>());
    EXPECT_EQ(c.model_type, w["model_type"].get<std::string>());
    EXPECT_EQ(c.hidden_size, w["hidden_size"].get<int>());
    EXPECT_EQ(c.intermediate_size, w["intermediate_size"].get<int>());
    EXPECT_EQ(c.num_hidden_layers, w["num_hidden_layers"].get<int>());
    EXPECT_EQ(c.num_attention_heads, w["num_attention_heads"].get<int>());
    EXPECT_EQ(c.num_key_value_heads, w["num_key_value_heads"].get<int>());
    EXPECT_EQ(c.head_dim, w["head_dim"].get<int>());
    EXPECT_EQ(c.vocab_size, w["vocab_size"].get<int>());
    EXPECT_EQ(c.max_position_embeddings, w["max_position_embeddings"].get<int>());
    EXPECT_DOUBLE_EQ(c.rms_norm_eps, w["rms_norm_eps"].get<double>());
    EXPECT_DOUBLE_EQ(c.rope_theta, w["rope_theta"].get<double>());
    std::string rope_type = w["rope_type"].get<std::string>();
    EXPECT_EQ(c.rope_scaling.type, rope_type == "default" ? "" : rope_type);
    if (rope_type != "default") EXPECT_DOUBLE_EQ(c.rope_scaling.factor, w["rope_factor"].get<double>());
    if (rope_type == "llama3") {
      EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, w["low_freq_factor"].get<double>());
      EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, w["high_freq_factor"].get<double>());
      EXPECT_EQ(c.rope_scaling.original_max_position_embeddings,
                w["original_max_position_embeddings"].get<int>());
    }
    EXPECT_EQ(c.tie_word_embeddings, w["tie_word_embeddings"].get<bool>());
    EXPECT_EQ(c.attention_bias, w["q_bias"].get<bool>());
    EXPECT_EQ(c.attention_bias, w["k_bias"].get<bool>());
    EXPECT_EQ(c.attention_bias, w["v_bias"].get<bool>());
    EXPECT_EQ(c.o_proj_bias, w["o_bias"].get<bool>());
    EXPECT_EQ(c.mlp_bias, w["mlp_bias"].get<bool>());
    EXPECT_EQ(c.bos_token_id, w["bos_token_id"].get<int>());
    EXPECT_EQ(c.eos_token_ids, w["eos_token_ids"].get<std::vector<int>>());
    EXPECT_EQ(c.pad_token_id, w["pad_token_id"].get<int>());
    EXPECT_EQ(c.sliding_window, w["sliding_window"].get<int>());
    EXPECT_EQ(c.hidden_act, "silu");
  }
}

TEST(HfConfig, DtypeKeysAndTinyModel) {
  EXPECT_EQ(load_model_config(kConfigs + "/llama_v5_llama3").torch_dtype, "bfloat16");  // "dtype"
  EXPECT_EQ(load_model_config(kConfigs + "/llama_v4_style/config.json").torch_dtype,
            "bfloat16");  // "torch_dtype"
  EXPECT_EQ(load_model_config(kConfigs + "/qwen2_tied_sliding").torch_dtype, "float16");
  EXPECT_EQ(load_model_config(kConfigs + "/mistral_defaults").torch_dtype, "float32");  // absent
  ModelConfig t = load_model_config(QTUNE_FIXTURES "/io/tiny_llama");
  EXPECT_EQ(t.hidden_size, 16);
  EXPECT_EQ(t.head_dim, 4);
  EXPECT_EQ(t.num_key_value_heads, 2);
  // Architecture from model_type alone; llama3 original context defaults to max_position_embeddings.
  ModelConfig m = parse_model_config(R"({"model_type":"llama","hidden_size":32,"intermediate_size":64,
      "num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10,"max_position_embeddings":4096,
      "rope_parameters":{"rope_type":"llama3","factor":4,"low_freq_factor":1,"high_freq_factor":4}})",
                                     "mem.json");
  EXPECT_EQ(m.architecture, "LlamaForCausalLM");
  EXPECT_EQ(m.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(m.rope_scaling.factor, 4.0);
}

const char* kBase = R"("architectures":["LlamaForCausalLM"],"model_type":"llama","intermediate_size":64,
    "num_hidden_layers":2,"vocab_size":10)";

// parse {kBase, extra} and return the Config error message.
std::string bad(const std::string& extra) {
  std::string text = std::string("{") + kBase + (extra.empty() ? "" : ",") + extra + "}";
  return error_of([&] { parse_model_config(text, "cfg/config.json"); }, ErrorKind::Config);
}

TEST(HfConfig, Errors) {
  const std::string ok_sizes = R"("hidden_size":32,"num_attention_heads":4)";
  std::string m;
  m = error_of([] { parse_model_config("{\n  \"hidden_size\": 32,\n  \"vocab_size\": }", "x/config.json"); },
               ErrorKind::Config);
  EXPECT_HAS(m, "x/config.json: malformed JSON");
  EXPECT_HAS(m, "line 3");
  m = error_of([] { parse_model_config("[]", "x/config.json"); }, ErrorKind::Config);
  EXPECT_HAS(m, "expected a JSON object, got array");

  m = bad(R"("num_attention_heads":4)");
  EXPECT_HAS(m, "cfg/config.json: field 'hidden_size' is required but missing");
  m = bad(R"("hidden_size":"32","num_attention_heads":4)");
  EXPECT_HAS(m, "field 'hidden_size' must be an integer, got string");
  m = bad(R"("hidden_size":32.0,"num_attention_heads":4)");
  EXPECT_HAS(m, "field 'hidden_size' must be an integer, got number (32.0)");
  m = error_of(
      [] {
        parse_model_config(R"({"model_type":"qwen2","hidden_size":32,"intermediate_size":64,
                      "num_hidden_layers":0,"vocab_size":10,"num_attention_heads":4})",
                           "q.json");
      },
      ErrorKind::Config);
  EXPECT_HAS(m, "q.json: field 'num_hidden_layers' must be positive, got 0");
  m = bad(R"("hidden_size":30,"num_attention_heads":4)");
  EXPECT_HAS(
      m, "field 'hidden_size' (30) is not divisible by num_attention_heads (4) and head_dim is not given");
  m = bad(ok_sizes + R"(,"num_key_value_heads":3)");
  EXPECT_HAS(m, "field 'num_key_value_heads' (3) does not divide num_attention_heads (4)");
  m = bad(ok_sizes + R"(,"head_dim":-8)");
  EXPECT_HAS(m, "field 'head_dim' must be positive, got -8");
  m = bad(ok_sizes + R"(,"hidden_act":"gelu_new")");
  EXPECT_HAS(m, "field 'hidden_act' is 'gelu_new'; qtune supports only 'silu'");
  m = bad(ok_sizes + R"(,"rope_scaling":{"type":"yarn","factor":4.0})");
  EXPECT_HAS(m, "field 'rope_scaling.rope_type' is 'yarn', which qtune does not support");
  EXPECT_HAS(m, "supported: default, linear, llama3");
  m = bad(ok_sizes + R"(,"rope_parameters":{"rope_type":"llama3","factor":8.0,"high_freq_factor":4.0})");
  EXPECT_HAS(m, "field 'rope_parameters.low_freq_factor' is required for rope_type 'llama3' but missing");
  m = bad(ok_sizes + R"(,"rope_scaling":"linear")");
  EXPECT_HAS(m, "field 'rope_scaling' must be an object, got string");
  m = bad(ok_sizes + R"(,"rope_parameters":{"rope_theta":"big"})");
  EXPECT_HAS(m, "field 'rope_parameters.rope_theta' must be a number, got string");
  m = bad(ok_sizes + R"(,"eos_token_id":[2,"</s>"])");
  EXPECT_HAS(m, "field 'eos_token_id[1]' must be an integer, got string");
  m = bad(ok_sizes + R"(,"tie_word_embeddings":"yes")");
  EXPECT_HAS(m, "field 'tie_word_embeddings' must be true or false, got string");
  m = bad(ok_sizes + R"(,"torch_dtype":"float8")");
  EXPECT_HAS(m, "field 'torch_dtype' is 'float8'");

  m = error_of([] { parse_model_config(R"({"architectures":["GPT2LMHeadModel"],"n_embd":8})", "g.json"); },
               ErrorKind::Config);
  EXPECT_HAS(m, "g.json: unsupported architecture 'GPT2LMHeadModel'");
  EXPECT_HAS(m, "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM");
  m = error_of([] { parse_model_config(R"({"model_type":"gemma"})", "g.json"); }, ErrorKind::Config);
  EXPECT_HAS(m, "unsupported model_type 'gemma'");
  m = error_of([] { parse_model_config(R"({"hidden_size":8})", "g.json"); }, ErrorKind::Config);
  EXPECT_HAS(m, "neither 'architectures' nor 'model_type' is set");
  // Mistral's default kv heads (8) when absent must divide the head count.
  m = error_of(
      [] {
        parse_model_config(R"({"model_type":"mistral","hidden_size":32,"intermediate_size":64,
                      "num_hidden_layers":2,"vocab_size":10,"num_attention_heads":4})",
                           "mi.json");
      },
      ErrorKind::Config);
  EXPECT_HAS(
      m, "field 'num_key_value_heads' (8, the default when absent) does not divide num_attention_heads (4)");

  TempDir dir;
  m = error_of([&] { load_model_config(dir.path()); }, ErrorKind::Config);
  EXPECT_HAS(m, dir.path() + "/config.json: config file not found");
}

TEST(HfConfig, HeadDimOverridesDivisibility) {
  ModelConfig c = parse_model_config(std::string("{") + kBase + R"(,"hidden_size":30,"num_attention_heads":4,
                                         "head_dim":8,"num_key_value_heads":2,"attention_bias":true,"eos_token_id":null})",
                                     "c.json");
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.o_proj_bias);  // Llama's attention_bias covers o_proj too
  EXPECT_TRUE(c.eos_token_ids.empty());
}

}  // namespace
