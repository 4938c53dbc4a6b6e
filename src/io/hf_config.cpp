// config.json → ModelConfig for LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM, with the
// defaults transformers' config classes use when a field is absent (or null), and the biases each
// architecture's attention/MLP layers really have. Both the transformers 4 layout (top-level rope_theta,
// "rope_scaling" dict, "torch_dtype") and the transformers 5 layout ("rope_parameters" dict holding
// rope_theta and rope_type, "dtype") are read.
#include "io/hf_config.h"

#include "io/json_util.h"

namespace qtune {

using json = nlohmann::json;

namespace {

struct ArchInfo {
  const char* architecture;
  const char* model_type;
  int default_kv_heads;  // 0: same as num_attention_heads
  int default_max_positions;
  int default_bos;  // -1: none
  int default_eos;  // -1: none
};

// The class defaults of LlamaConfig, MistralConfig and Qwen2Config (transformers 5).
const ArchInfo kArchs[] = {
    {"LlamaForCausalLM", "llama", 0, 2048, 1, 2},
    {"MistralForCausalLM", "mistral", 8, 4096 * 32, 1, 2},
    {"Qwen2ForCausalLM", "qwen2", 32, 32768, -1, -1},
};
const char* kSupported = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";

// Field readers: absent or null → default; wrong type → error naming the file and field.
class Fields {
 public:
  Fields(const json& j, std::string src) : j_(j), src_(std::move(src)) {}

  bool present(const char* k) const { return j_.contains(k) && !j_[k].is_null(); }
  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw_error(ErrorKind::Config, src_, ": field '", field, "' ", what);
  }
  void wrong_type(const std::string& field, const json& v, const char* expected) const {
    fail(field, "must be " + std::string(expected) + ", got " + json_type_name(v));
  }

  int get_int(const json& v, const std::string& field) const {
    if (!v.is_number_integer()) wrong_type(field, v, "an integer");
    int64_t x = v.get<int64_t>();
    if (x < INT32_MIN || x > INT32_MAX) fail(field, "is out of range: " + v.dump());
    return (int)x;
  }
  int integer(const char* k, int def) const { return present(k) ? get_int(j_[k], k) : def; }
  int required_positive(const char* k) const {
    if (!present(k)) fail(k, "is required but missing");
    return positive(k, 0);
  }
  int positive(const char* k, int def) const {
    int x = integer(k, def);
    if (x <= 0) fail(k, "must be positive, got " + std::to_string(x));
    return x;
  }
  double number(const json& v, const std::string& field) const {
    if (!v.is_number()) wrong_type(field, v, "a number");
    return v.get<double>();
  }
  double number(const char* k, double def) const { return present(k) ? number(j_[k], k) : def; }
  bool boolean(const char* k, bool def) const {
    if (!present(k)) return def;
    if (!j_[k].is_boolean()) wrong_type(k, j_[k], "true or false");
    return j_[k].get<bool>();
  }
  std::string string(const char* k, const std::string& def) const {
    if (!present(k)) return def;
    if (!j_[k].is_string()) wrong_type(k, j_[k], "a string");
    return j_[k].get<std::string>();
  }
  const json& at(const char* k) const { return j_[k]; }
  bool has_key(const char* k) const { return j_.contains(k); }
  const json& at_or_null(const char* k) const {
    static const json null_value;
    return j_.contains(k) ? j_[k] : null_value;
  }
  const std::string& src() const { return src_; }

 private:
  const json& j_;
  std::string src_;
};

// rope_parameters (transformers 5) or rope_scaling (4.x): rope_theta inside the dict wins over the
// top-level one; "rope_type" or the older "type"; llama3's original context defaults to
// max_position_embeddings as transformers 5 does.
void parse_rope(const Fields& f, ModelConfig* c) {
  c->rope_theta = f.number("rope_theta", 10000.0);
  const char* key = f.present("rope_parameters") ? "rope_parameters" : "rope_scaling";
  if (!f.present(key)) return;
  const json* d = &f.at(key);
  if (!d->is_object()) f.wrong_type(key, *d, "an object");
  // Per-layer-type nesting ({"full_attention": {...}}) as transformers 5 allows.
  if (d->contains("full_attention") && (*d)["full_attention"].is_object()) d = &(*d)["full_attention"];
  const std::string pre = std::string(key) + ".";
  if (d->contains("rope_theta") && !(*d)["rope_theta"].is_null())
    c->rope_theta = f.number((*d)["rope_theta"], pre + "rope_theta");
  std::string type = "default";
  for (const char* tk : {"rope_type", "type"}) {
    if (d->contains(tk) && !(*d)[tk].is_null()) {
      if (!(*d)[tk].is_string()) f.wrong_type(pre + tk, (*d)[tk], "a string");
      type = (*d)[tk].get<std::string>();
      break;
    }
  }
  if (type == "default") return;
  if (type != "linear" && type != "llama3")
    f.fail(pre + "rope_type",
           "is '" + type + "', which qtune does not support (supported: default, linear, llama3)");
  RopeScaling& r = c->rope_scaling;
  r.type = type;
  auto need = [&](const char* k) -> const json& {
    if (!d->contains(k) || (*d)[k].is_null())
      f.fail(pre + k, "is required for rope_type '" + type + "' but missing");
    return (*d)[k];
  };
  r.factor = f.number(need("factor"), pre + "factor");
  if (r.factor <= 0) f.fail(pre + "factor", "must be positive, got " + need("factor").dump());
  if (type == "llama3") {
    r.low_freq_factor = f.number(need("low_freq_factor"), pre + "low_freq_factor");
    r.high_freq_factor = f.number(need("high_freq_factor"), pre + "high_freq_factor");
    if (r.high_freq_factor <= r.low_freq_factor)
      f.fail(pre + "high_freq_factor", "must exceed low_freq_factor");
    const char* ok = "original_max_position_embeddings";
    r.original_max_position_embeddings =
        (d->contains(ok) && !(*d)[ok].is_null()) ? f.get_int((*d)[ok], pre + ok) : c->max_position_embeddings;
    if (r.original_max_position_embeddings <= 0) f.fail(pre + ok, "must be positive");
  }
}

std::vector<int> token_ids(const Fields& f, const char* k, int def) {
  if (!f.present(k)) {  // absent → the class default; an explicit null → none
    bool null = f.at_or_null(k).is_null() && f.has_key(k);
    return (def >= 0 && !null) ? std::vector<int>{def} : std::vector<int>{};
  }
  const json& v = f.at(k);
  if (v.is_number_integer()) return {f.get_int(v, k)};
  if (!v.is_array()) f.wrong_type(k, v, "an integer or a list of integers");
  std::vector<int> ids;
  for (size_t i = 0; i < v.size(); i++)
    ids.push_back(f.get_int(v[i], std::string(k) + "[" + std::to_string(i) + "]"));
  return ids;
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& source_name) {
  json j = parse_json_text(json_text, source_name, ErrorKind::Config);
  if (!j.is_object())
    throw_error(ErrorKind::Config, source_name, ": expected a JSON object, got ", json_type_name(j));
  Fields f(j, source_name);
  ModelConfig c;

  // Architecture from "architectures"[0], else from model_type; defaults follow model_type.
  const ArchInfo* arch = nullptr;
  std::string arch_name;
  if (f.present("architectures")) {
    const json& a = f.at("architectures");
    if (!a.is_array() || a.empty() || !a[0].is_string())
      f.wrong_type("architectures", a, "a non-empty list of strings");
    arch_name = a[0].get<std::string>();
    for (const ArchInfo& x : kArchs)
      if (arch_name == x.architecture) arch = &x;
    if (!arch)
      throw_error(ErrorKind::Config, source_name, ": unsupported architecture '", arch_name,
                  "' (supported: ", kSupported, ")");
  }
  std::string model_type = f.string("model_type", arch ? arch->model_type : "");
  const ArchInfo* defaults = nullptr;
  for (const ArchInfo& x : kArchs)
    if (model_type == x.model_type) defaults = &x;
  if (!defaults) {
    if (model_type.empty())
      throw_error(ErrorKind::Config, source_name,
                  ": neither 'architectures' nor 'model_type' is set (supported: ", kSupported, ")");
    throw_error(ErrorKind::Config, source_name, ": unsupported model_type '", model_type,
                "' (supported: llama, mistral, qwen2)");
  }
  if (!arch) arch = defaults;
  c.architecture = arch->architecture;
  c.model_type = model_type;

  c.hidden_size = f.required_positive("hidden_size");
  c.intermediate_size = f.required_positive("intermediate_size");
  c.num_hidden_layers = f.required_positive("num_hidden_layers");
  c.num_attention_heads = f.required_positive("num_attention_heads");
  c.vocab_size = f.required_positive("vocab_size");
  // Absent → the class default; an explicit null → num_attention_heads (as __post_init__ does).
  int kv_default = defaults->default_kv_heads && !f.has_key("num_key_value_heads")
                       ? defaults->default_kv_heads
                       : c.num_attention_heads;
  c.num_key_value_heads = f.positive("num_key_value_heads", kv_default);
  if (f.present("head_dim")) {
    c.head_dim = f.positive("head_dim", 0);
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      f.fail("hidden_size", "(" + std::to_string(c.hidden_size) +
                                ") is not divisible by num_attention_heads (" +
                                std::to_string(c.num_attention_heads) + ") and head_dim is not given");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    f.fail("num_key_value_heads", "(" + std::to_string(c.num_key_value_heads) +
                                      (f.present("num_key_value_heads") ? "" : ", the default when absent") +
                                      ") does not divide num_attention_heads (" +
                                      std::to_string(c.num_attention_heads) + ")");
  c.max_position_embeddings = f.positive("max_position_embeddings", defaults->default_max_positions);
  c.rms_norm_eps = f.number("rms_norm_eps", 1e-6);
  if (c.rms_norm_eps <= 0) f.fail("rms_norm_eps", "must be positive");
  parse_rope(f, &c);
  if (c.rope_theta <= 0) f.fail("rope_theta", "must be positive");
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);

  c.hidden_act = f.string("hidden_act", "silu");
  if (c.hidden_act != "silu")
    f.fail("hidden_act", "is '" + c.hidden_act + "'; qtune supports only 'silu' (SwiGLU MLP)");

  if (model_type == "qwen2") {  // Qwen2Attention: q/k/v with bias, o without
    c.attention_bias = true;
    c.o_proj_bias = false;
  } else if (model_type == "llama") {  // LlamaAttention: attention_bias on all of q, k, v, o
    c.attention_bias = f.boolean("attention_bias", false);
    c.o_proj_bias = c.attention_bias;
    c.mlp_bias = f.boolean("mlp_bias", false);
  }

  // "dtype" (transformers 5) or "torch_dtype" (4.x).
  c.torch_dtype = f.present("dtype") ? f.string("dtype", "") : f.string("torch_dtype", "float32");
  static const char* kDtypes[] = {"float32", "float16", "bfloat16"};
  bool known = false;
  for (const char* d : kDtypes) known = known || c.torch_dtype == d;
  if (!known)
    f.fail(f.present("dtype") ? "dtype" : "torch_dtype",
           "is '" + c.torch_dtype + "' (expected float32, float16 or bfloat16)");

  auto bos = token_ids(f, "bos_token_id", defaults->default_bos);
  c.bos_token_id = bos.empty() ? -1 : bos[0];
  c.eos_token_ids = token_ids(f, "eos_token_id", defaults->default_eos);
  auto pad = token_ids(f, "pad_token_id", -1);
  c.pad_token_id = pad.empty() ? -1 : pad[0];

  // Mistral: sliding_window defaults to 4096 when absent (null = none); Qwen2 uses it only when
  // use_sliding_window is true.
  bool sliding = model_type == "mistral" || (model_type == "qwen2" && f.boolean("use_sliding_window", false));
  if (sliding) c.sliding_window = j.contains("sliding_window") ? f.integer("sliding_window", 0) : 4096;
  if (c.sliding_window < 0) f.fail("sliding_window", "must not be negative");
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::string file = path_is_dir(path) ? path_join(path, "config.json") : path;
  if (!path_is_file(file)) throw_error(ErrorKind::Config, file, ": config file not found");
  return parse_model_config(read_text_file(file, ErrorKind::Config), file);
}

}  // namespace qtune
