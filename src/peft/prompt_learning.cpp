// Prompt learning adapters: config, init, PEFT folder I/O, virtual tokens (see prompt_learning.h).
#include "peft/prompt_learning.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "io/json_util.h"
#include "io/safetensors.h"
#include "ops/embedding.h"

namespace qtune {

namespace {

const char* kKey = "prompt_embeddings";  // PEFT's one saved key for prompt learning

// adapter_config.json's peft_type → type; throws naming the file.
PromptLearningType parse_type(const std::string& s, const std::string& path) {
  if (s == "PROMPT_TUNING") return PromptLearningType::PromptTuning;
  if (s == "P_TUNING") return PromptLearningType::PTuning;
  if (s == "PREFIX_TUNING") return PromptLearningType::PrefixTuning;
  throw_error(ErrorKind::Unsupported, path, ": peft_type '", s,
              "' is not a prompt learning type (PROMPT_TUNING, P_TUNING, PREFIX_TUNING)");
}

}  // namespace

const char* prompt_learning_type_name(PromptLearningType t) {
  switch (t) {
    case PromptLearningType::PromptTuning:
      return "PROMPT_TUNING";
    case PromptLearningType::PTuning:
      return "P_TUNING";
    case PromptLearningType::PrefixTuning:
      return "PREFIX_TUNING";
  }
  return "?";
}

bool is_prompt_learning_type(const std::string& s) {
  return s == "PROMPT_TUNING" || s == "P_TUNING" || s == "PREFIX_TUNING";
}

Shape PromptLearningConfig::embeddings_shape() const {
  if (peft_type == PromptLearningType::PrefixTuning) return {num_virtual_tokens, num_layers * 2 * token_dim};
  return {num_virtual_tokens, token_dim};
}

void PromptLearningConfig::fill_from_model(const ModelConfig& m) {
  if (num_layers <= 0) num_layers = m.num_hidden_layers;
  if (peft_type == PromptLearningType::PrefixTuning) {
    if (token_dim <= 0) token_dim = (int64_t)m.num_key_value_heads * m.head_dim;
    if (num_attention_heads <= 0) num_attention_heads = m.num_key_value_heads;
  } else {
    if (token_dim <= 0) token_dim = m.hidden_size;
    if (num_attention_heads <= 0) num_attention_heads = m.num_attention_heads;
  }
  if (encoder_hidden_size <= 0) encoder_hidden_size = token_dim;
}

void PromptLearningConfig::validate(const ModelConfig& m, const std::string& ctx) const {
  const char* type = prompt_learning_type_name(peft_type);
  if (num_virtual_tokens <= 0)
    throw_error(ErrorKind::Config, ctx, "num_virtual_tokens must be > 0, got ", num_virtual_tokens);
  if (num_virtual_tokens >= m.max_position_embeddings)
    throw_error(ErrorKind::Config, ctx, num_virtual_tokens,
                " virtual tokens leave no room in the model's context (max_position_embeddings ",
                m.max_position_embeddings, ")");
  if (num_transformer_submodules != 1)
    throw_error(ErrorKind::Unsupported, ctx, "num_transformer_submodules ", num_transformer_submodules,
                " (encoder-decoder models) is not supported; qtune runs decoder-only models");
  if (peft_type == PromptLearningType::PrefixTuning) {
    const int64_t W = (int64_t)m.num_key_value_heads * m.head_dim;
    if (num_layers != m.num_hidden_layers || token_dim != W || num_attention_heads != m.num_key_value_heads)
      throw_error(ErrorKind::Config, ctx, type, " adapter made for another base: num_layers ", num_layers,
                  ", token_dim ", token_dim, ", num_attention_heads ", num_attention_heads,
                  "; this model has ", m.num_hidden_layers, " layers and key/value rows of ",
                  m.num_key_value_heads, " heads x ", m.head_dim, " = ", W, " (hidden size ", m.hidden_size,
                  ")");
  } else if (token_dim != m.hidden_size) {
    throw_error(ErrorKind::Config, ctx, type, " adapter made for another base: token_dim ", token_dim,
                "; this model's hidden size is ", m.hidden_size);
  }
  if (peft_type == PromptLearningType::PromptTuning && prompt_tuning_init != "RANDOM" &&
      prompt_tuning_init != "TEXT" && prompt_tuning_init != "SAMPLE_VOCAB")
    throw_error(ErrorKind::Config, ctx, "prompt_tuning_init '", prompt_tuning_init,
                "' is not one of RANDOM, TEXT, SAMPLE_VOCAB");
  if (peft_type == PromptLearningType::PTuning && encoder_reparameterization_type != "MLP" &&
      encoder_reparameterization_type != "LSTM")
    throw_error(ErrorKind::Config, ctx, "encoder_reparameterization_type '", encoder_reparameterization_type,
                "' is not MLP or LSTM");
  if (peft_type == PromptLearningType::PrefixTuning && !init_weights.empty() && init_weights != "zero")
    throw_error(ErrorKind::Config, ctx, "init_weights must be null or \"zero\", got '", init_weights, "'");
}

PromptLearningConfig read_prompt_learning_config(const std::string& path) {
  using nlohmann::json;
  json j = read_json_object_file(path);
  auto field = [&](const char* k) { return json_field(j, k); };
  auto bad = [&](const char* k, const char* want) {
    throw_error(ErrorKind::Format, path, ": field '", k, "' must be ", want, ", got ", j[k].dump());
  };
  auto integer = [&](const char* k, int64_t& dst, bool required) {
    const json* v = field(k);
    if (!v) {
      if (required) throw_error(ErrorKind::Format, path, ": '", k, "' is missing");
      return;
    }
    if (!v->is_number_integer()) bad(k, "an integer");
    dst = v->get<int64_t>();
  };
  auto string = [&](const char* k, std::string& dst) {
    if (const json* v = field(k)) {
      if (!v->is_string()) bad(k, "a string");
      dst = v->get<std::string>();
    }
  };
  PromptLearningConfig c;
  c.peft_type = parse_type(json_peft_type(j, path), path);
  integer("num_virtual_tokens", c.num_virtual_tokens, true);
  integer("token_dim", c.token_dim, true);
  integer("num_layers", c.num_layers, true);
  integer("num_attention_heads", c.num_attention_heads, false);
  integer("num_transformer_submodules", c.num_transformer_submodules, false);
  integer("encoder_hidden_size", c.encoder_hidden_size, false);
  integer("encoder_num_layers", c.encoder_num_layers, false);
  if (const json* v = field("encoder_dropout")) {
    if (!v->is_number()) bad("encoder_dropout", "a number");
    c.encoder_dropout = v->get<double>();
  }
  string("prompt_tuning_init", c.prompt_tuning_init);
  string("prompt_tuning_init_text", c.prompt_tuning_init_text);
  string("tokenizer_name_or_path", c.tokenizer_name_or_path);
  string("encoder_reparameterization_type", c.encoder_reparameterization_type);
  string("init_weights", c.init_weights);
  string("base_model_name_or_path", c.base_model_name_or_path);
  string("task_type", c.task_type);
  if (const json* v = field("prefix_projection")) {
    if (!v->is_boolean()) bad("prefix_projection", "true or false");
    c.prefix_projection = v->get<bool>();
  }
  if (const json* v = field("modules_to_save"))
    if (!(v->is_array() && v->empty()))
      throw_error(ErrorKind::Unsupported, path, ": modules_to_save (", v->dump(),
                  ") with prompt learning is not supported");
  if (!c.task_type.empty() && c.task_type != "CAUSAL_LM")
    throw_error(ErrorKind::Unsupported, path, ": task_type '", c.task_type, "' is not supported (CAUSAL_LM)");
  return c;
}

void write_prompt_learning_config(const std::string& path, const PromptLearningConfig& c) {
  using nlohmann::json;
  auto str_or_null = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  json j = json::object();
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = str_or_null(c.base_model_name_or_path);
  j["inference_mode"] = true;
  j["modules_to_save"] = nullptr;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_layers"] = c.num_layers;
  j["num_transformer_submodules"] = c.num_transformer_submodules;
  j["num_virtual_tokens"] = c.num_virtual_tokens;
  j["peft_type"] = prompt_learning_type_name(c.peft_type);
  j["peft_version"] = "0.21.2";  // the PEFT release whose format this follows
  j["revision"] = nullptr;
  j["task_type"] = c.task_type;
  j["token_dim"] = c.token_dim;
  switch (c.peft_type) {
    case PromptLearningType::PromptTuning: {
      j["prompt_tuning_init"] = c.prompt_tuning_init;
      j["prompt_tuning_init_text"] = str_or_null(c.prompt_tuning_init_text);
      j["tokenizer_kwargs"] = nullptr;
      // PEFT's config requires a tokenizer for TEXT (it loads none in inference mode): the base's folder.
      std::string tok = c.tokenizer_name_or_path;
      if (tok.empty() && c.prompt_tuning_init == "TEXT") tok = c.base_model_name_or_path;
      j["tokenizer_name_or_path"] = str_or_null(tok);
      break;
    }
    case PromptLearningType::PTuning:
      j["encoder_dropout"] = c.encoder_dropout;
      j["encoder_hidden_size"] = c.encoder_hidden_size;
      j["encoder_num_layers"] = c.encoder_num_layers;
      j["encoder_reparameterization_type"] = c.encoder_reparameterization_type;
      break;
    case PromptLearningType::PrefixTuning:
      j["encoder_hidden_size"] = c.encoder_hidden_size;
      j["init_weights"] = str_or_null(c.init_weights);
      j["prefix_projection"] = c.prefix_projection;
      break;
  }
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw_error(ErrorKind::Io, "cannot write ", tmp);
    f << j.dump(2) << "\n";
    if (!f) throw_error(ErrorKind::Io, "cannot write ", tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw_error(ErrorKind::Io, path, ": cannot rename ", tmp, " into place");
}

PromptLearningModel PromptLearningModel::create(const LlamaModel& model, PromptLearningConfig cfg,
                                                uint64_t seed, const std::vector<int32_t>& init_ids) {
  const ModelConfig& m = model.config();
  cfg.fill_from_model(m);
  cfg.validate(m, std::string(prompt_learning_type_name(cfg.peft_type)) + " config: ");
  PromptLearningModel pl;
  pl.model_ = &model;
  pl.cfg_ = cfg;
  if (pl.cfg_.base_model_name_or_path.empty()) pl.cfg_.base_model_name_or_path = model.source();
  const int64_t P = cfg.num_virtual_tokens;
  std::mt19937_64 rng(seed);
  auto normal = [&](const Shape& s) {
    Tensor t = Tensor::empty(s, DType::F32);
    std::normal_distribution<double> nd(0.0, 1.0);
    for (int64_t i = 0; i < t.numel(); i++) t.data<float>()[i] = (float)nd(rng);
    return t;
  };
  switch (cfg.peft_type) {
    case PromptLearningType::PromptTuning: {
      if (cfg.prompt_tuning_init == "RANDOM") {
        pl.emb_ = normal({P, cfg.token_dim});  // torch.nn.Embedding's init
        break;
      }
      std::vector<int32_t> ids;
      if (cfg.prompt_tuning_init == "TEXT") {
        if (init_ids.empty())
          throw_error(ErrorKind::Config, "PROMPT_TUNING config: prompt_tuning_init TEXT needs the tokens of ",
                      "prompt_tuning_init_text (none given)");
        // PEFT: cut to P, or repeat the whole list ceil(P / n) times, then cut.
        for (int64_t i = 0; i < P; i++) ids.push_back(init_ids[i % (int64_t)init_ids.size()]);
      } else {  // SAMPLE_VOCAB
        std::uniform_int_distribution<int32_t> ud(0, m.vocab_size - 1);
        for (int64_t i = 0; i < P; i++) ids.push_back(ud(rng));
      }
      for (int32_t id : ids)
        if (id < 0 || id >= m.vocab_size)
          throw_error(ErrorKind::Config, "PROMPT_TUNING config: init token id ", id,
                      " is outside the vocabulary");
      Tensor out = Tensor::empty({P, (int64_t)m.hidden_size}, DType::F32, model.device());
      embedding_forward(out, Tensor::from_i32(ids, {P}).to(model.device()), model.embed_tokens());
      pl.emb_ = out.to(Device::CPU).clone();
      break;
    }
    case PromptLearningType::PTuning:
      if (cfg.encoder_reparameterization_type != "MLP")
        throw_error(ErrorKind::Unsupported, "P_TUNING config: encoder_reparameterization_type '",
                    cfg.encoder_reparameterization_type,
                    "' cannot be trained by qtune (MLP can; LSTM-trained folders load)");
      pl.encoder_ = std::make_shared<PromptEncoder>(
          PromptEncoder::p_tuning(P, cfg.token_dim, cfg.encoder_hidden_size, seed));
      break;
    case PromptLearningType::PrefixTuning:
      if (cfg.prefix_projection) {
        pl.encoder_ = std::make_shared<PromptEncoder>(PromptEncoder::prefix_projection(
            P, cfg.token_dim, cfg.encoder_hidden_size, cfg.num_layers * 2 * cfg.token_dim,
            cfg.init_weights == "zero", seed));
      } else {
        pl.emb_ = cfg.init_weights == "zero" ? Tensor::zeros(cfg.embeddings_shape(), DType::F32)
                                             : normal(cfg.embeddings_shape());
      }
      break;
  }
  pl.refresh();
  return pl;
}

PromptLearningModel PromptLearningModel::load(const LlamaModel& model, const std::string& dir) {
  const std::string cfg_path = path_join(dir, "adapter_config.json");
  const std::string st_path = path_join(dir, "adapter_model.safetensors");
  if (!path_is_dir(dir)) throw_error(ErrorKind::Io, "adapter folder ", dir, " does not exist");
  if (!path_is_file(cfg_path)) throw_error(ErrorKind::Io, "no adapter_config.json in adapter folder ", dir);
  if (!path_is_file(st_path))
    throw_error(ErrorKind::Io, "no adapter_model.safetensors in adapter folder ", dir);
  PromptLearningModel pl;
  pl.model_ = &model;
  pl.cfg_ = read_prompt_learning_config(cfg_path);
  pl.cfg_.validate(model.config(), cfg_path + ": ");
  auto file = SafetensorsFile::open(st_path);
  if (!file->has(kKey))
    throw_error(ErrorKind::Format, st_path, ": missing tensor '", kKey, "' (PEFT's ",
                prompt_learning_type_name(pl.cfg_.peft_type), " adapters hold only that tensor)");
  for (const TensorInfo& ti : file->tensors())
    if (ti.name != kKey)
      throw_error(ErrorKind::Format, st_path, ": unexpected tensor '", ti.name, "' (a ",
                  prompt_learning_type_name(pl.cfg_.peft_type), " adapter holds only '", kKey, "')");
  Tensor t = file->get(kKey);
  const Shape want = pl.cfg_.embeddings_shape();
  if (t.shape() != want)
    throw_error(
        ErrorKind::Format, st_path, ": tensor '", kKey, "' has shape ", shape_str(t.shape()), ", expected ",
        shape_str(want), " (num_virtual_tokens ", pl.cfg_.num_virtual_tokens,
        pl.cfg_.peft_type == PromptLearningType::PrefixTuning ? ", num_layers·2·token_dim" : ", token_dim",
        " from adapter_config.json)");
  if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
    throw_error(ErrorKind::Format, st_path, ": tensor '", kKey, "' has dtype ", dtype_name(t.dtype()),
                ", expected F32, BF16 or F16");
  pl.emb_ = t.to_dtype(DType::F32).clone();
  return pl;
}

void PromptLearningModel::refresh() {
  if (encoder_) emb_ = encoder_->forward();
}

void PromptLearningModel::save(const std::string& dir) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw_error(ErrorKind::Io, "cannot create adapter folder ", dir, ": ", ec.message());
  write_safetensors(path_join(dir, "adapter_model.safetensors"), {{kKey, emb_}}, {{"format", "pt"}});
  write_prompt_learning_config(path_join(dir, "adapter_config.json"), cfg_);
}

VirtualTokens PromptLearningModel::virtual_tokens() const {
  VirtualTokens vt;
  if (cfg_.peft_type != PromptLearningType::PrefixTuning) {
    vt.embeds = emb_;
    return vt;
  }
  const int64_t P = cfg_.num_virtual_tokens, W = cfg_.token_dim, L = cfg_.num_layers;
  const float* e = emb_.data<float>();  // [P, L·2·W]
  for (int64_t l = 0; l < L; l++)
    for (int kv = 0; kv < 2; kv++) {
      Tensor t = Tensor::empty({P, W}, DType::F32);  // [P, Hkv·D]
      for (int64_t p = 0; p < P; p++)
        std::copy(e + p * L * 2 * W + (2 * l + kv) * W, e + p * L * 2 * W + (2 * l + kv + 1) * W,
                  t.data<float>() + p * W);
      Tensor dev = t.to_dtype(model_->activation_dtype()).to(model_->device());
      (kv == 0 ? vt.keys : vt.values).push_back(dev);
    }
  return vt;
}

}  // namespace qtune
