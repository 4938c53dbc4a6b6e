// Ia3Config and its adapter_config.json (see ia3_config.h).
#include "peft/ia3_config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/error.h"
#include "io/json_util.h"
#include "peft/lora_config.h"

namespace qtune {

namespace {

bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

void write_atomic(const std::string& path, const nlohmann::json& j) {
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

// "model.layers.0.mlp.down_proj" ... → the distinct last parts ("down_proj" ...), as PEFT expands
// "all-linear" (so that feedforward_modules stays a subset when PEFT reads the file).
std::vector<std::string> short_names(const std::vector<std::string>& names) {
  std::vector<std::string> out;
  for (const std::string& n : names) {
    const size_t dot = n.rfind('.');
    std::string s = dot == std::string::npos ? n : n.substr(dot + 1);
    bool seen = false;
    for (const std::string& o : out) seen = seen || o == s;
    if (!seen) out.push_back(s);
  }
  return out;
}

}  // namespace

void Ia3Config::apply_defaults(const std::string& model_type, const std::string& context) {
  const bool qwen = model_type == "qwen2";
  const bool known = model_type == "llama" || model_type == "mistral" || qwen;
  if (target_modules.empty() && target_regex.empty() && !all_linear) {
    if (!known)
      throw_error(ErrorKind::Config, context, "IA3 has no default target_modules for model_type '",
                  model_type, "'; give them");
    target_modules = qwen ? std::vector<std::string>{"q_proj", "v_proj", "down_proj"}
                          : std::vector<std::string>{"k_proj", "v_proj", "down_proj"};
  }
  if (feedforward_modules.empty() && feedforward_regex.empty()) {
    if (!known)
      throw_error(ErrorKind::Config, context, "IA3 has no default feedforward_modules for model_type '",
                  model_type, "'; give them");
    feedforward_modules = {"down_proj"};
  }
  if (target_regex.empty() && !all_linear && feedforward_regex.empty())
    for (const std::string& f : feedforward_modules) {
      bool in = false;
      for (const std::string& t : target_modules) in = in || t == f;
      if (!in)
        throw_error(ErrorKind::Config, context, "feedforward_modules entry '", f,
                    "' is not in target_modules (PEFT requires a subset)");
    }
}

bool Ia3Config::is_feedforward(const std::string& module) const {
  if (!feedforward_regex.empty()) return std::regex_match(module, std::regex(feedforward_regex));
  for (const std::string& f : feedforward_modules)
    if (ends_with(module, f)) return true;
  return false;
}

LoraConfig Ia3Config::targeting() const {
  LoraConfig c;
  c.target_modules = target_modules;
  c.target_regex = target_regex;
  c.all_linear = all_linear;
  c.exclude_modules = exclude_modules;
  return c;
}

void set_ia3_modules(Ia3Config& cfg, const std::string& targets, const std::string& feedforward) {
  cfg.target_regex.clear();
  cfg.all_linear = targets == "all-linear";
  if (cfg.all_linear)
    cfg.target_modules.clear();
  else
    cfg.target_modules = split_comma_list(targets);
  cfg.feedforward_regex.clear();
  cfg.feedforward_modules = split_comma_list(feedforward);
}

Ia3Config read_ia3_config(const std::string& path) {
  using nlohmann::json;
  json j = read_json_object_file(path);
  auto field = [&](const char* k) { return json_field(j, k); };
  auto bad = [&](const char* k, const char* want, const json& got) {
    throw_error(ErrorKind::Format, path, ": field '", k, "' must be ", want, ", got ", got.dump());
  };
  const std::string type = json_peft_type(j, path);
  if (type != "IA3") throw_error(ErrorKind::Unsupported, path, ": peft_type '", type, "' is not IA3");
  Ia3Config c;
  // A list of strings, or one string (a regex; "all-linear" for targets).
  auto modules = [&](const char* k, std::vector<std::string>& list, std::string& regex, bool* all_linear) {
    const json* v = field(k);
    if (!v) return;
    if (v->is_string()) {
      if (all_linear && v->get<std::string>() == "all-linear")
        *all_linear = true;
      else
        regex = v->get<std::string>();
      return;
    }
    if (!v->is_array()) bad(k, "a string or a list of strings", *v);
    for (const json& t : *v) {
      if (!t.is_string()) bad(k, "a list of strings", t);
      list.push_back(t.get<std::string>());
    }
  };
  modules("target_modules", c.target_modules, c.target_regex, &c.all_linear);
  modules("feedforward_modules", c.feedforward_modules, c.feedforward_regex, nullptr);
  std::string exclude_regex;
  modules("exclude_modules", c.exclude_modules, exclude_regex, nullptr);
  if (!exclude_regex.empty())
    throw_error(ErrorKind::Unsupported, path, ": exclude_modules as a regex string is not supported");
  if (const json* v = field("fan_in_fan_out"))
    if (!v->is_boolean() || v->get<bool>())
      throw_error(ErrorKind::Unsupported, path, ": fan_in_fan_out=", v->dump(), " is not supported");
  if (const json* v = field("modules_to_save"))
    if (!(v->is_array() && v->empty()))
      throw_error(ErrorKind::Unsupported, path, ": field 'modules_to_save' (", v->dump(),
                  ") is not supported for IA3");
  if (const json* v = field("init_ia3_weights")) {
    if (!v->is_boolean()) bad("init_ia3_weights", "true or false", *v);
    c.init_ia3_weights = v->get<bool>();
  }
  if (const json* v = field("base_model_name_or_path"))
    if (v->is_string()) c.base_model_name_or_path = v->get<std::string>();
  if (const json* v = field("task_type"))
    if (v->is_string()) c.task_type = v->get<std::string>();
  if (!c.target_regex.empty()) {
    try {
      std::regex re(c.target_regex);
    } catch (const std::regex_error& e) {
      throw_error(ErrorKind::Format, path, ": target_modules regex '", c.target_regex,
                  "' is invalid: ", e.what());
    }
  }
  if (!c.feedforward_regex.empty()) {
    try {
      std::regex re(c.feedforward_regex);
    } catch (const std::regex_error& e) {
      throw_error(ErrorKind::Format, path, ": feedforward_modules regex '", c.feedforward_regex,
                  "' is invalid: ", e.what());
    }
  }
  return c;
}

void write_ia3_config(const std::string& path, const Ia3Config& c, const std::vector<std::string>& resolved) {
  using nlohmann::json;
  json j = json::object();
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] =
      c.base_model_name_or_path.empty() ? json(nullptr) : json(c.base_model_name_or_path);
  j["exclude_modules"] = c.exclude_modules.empty() ? json(nullptr) : json(c.exclude_modules);
  j["fan_in_fan_out"] = false;
  j["feedforward_modules"] =
      c.feedforward_regex.empty() ? json(c.feedforward_modules) : json(c.feedforward_regex);
  j["inference_mode"] = true;
  j["init_ia3_weights"] = c.init_ia3_weights;
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "IA3";
  j["peft_version"] = "0.21.2";  // the PEFT release whose format this follows
  j["revision"] = nullptr;
  if (!c.target_regex.empty())
    j["target_modules"] = c.target_regex;
  else
    j["target_modules"] = c.all_linear ? short_names(resolved) : c.target_modules;
  j["task_type"] = c.task_type;
  write_atomic(path, j);
}

}  // namespace qtune
