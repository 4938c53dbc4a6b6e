// LoraConfig and adapter_config.json (see lora_config.h).
#include "peft/lora_config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/error.h"
#include "io/json_util.h"

namespace qtune {

const char* lora_bias_name(LoraBias b) {
  switch (b) {
    case LoraBias::None:
      return "none";
    case LoraBias::All:
      return "all";
    case LoraBias::LoraOnly:
      return "lora_only";
  }
  return "?";
}

namespace {

// PEFT's get_pattern_key: the pattern p for which "(.*\.)?(p)$" matches the module name.
template <class V>
const V* pattern_value(const std::map<std::string, V>& patterns, const std::string& module) {
  for (const auto& [pat, v] : patterns)
    if (std::regex_match(module, std::regex("(.*\\.)?(" + pat + ")"))) return &v;
  return nullptr;
}

}  // namespace

int64_t LoraConfig::rank_for(const std::string& module) const {
  const int64_t* v = pattern_value(rank_pattern, module);
  return v ? *v : r;
}

double LoraConfig::alpha_for(const std::string& module) const {
  const double* v = pattern_value(alpha_pattern, module);
  return v ? *v : lora_alpha;
}

double LoraConfig::scale_for(const std::string& module) const {
  const double rr = (double)rank_for(module), a = alpha_for(module);
  return use_rslora ? a / std::sqrt(rr) : a / rr;
}

void LoraConfig::validate(const std::string& context) const {
  if (r <= 0) throw_error(ErrorKind::Config, context, "LoRA rank r must be > 0, got ", r);
  for (const auto& [pat, v] : rank_pattern)
    if (v <= 0) throw_error(ErrorKind::Config, context, "rank_pattern['", pat, "'] must be > 0, got ", v);
  if (!(lora_alpha > 0)) throw_error(ErrorKind::Config, context, "lora_alpha must be > 0, got ", lora_alpha);
  if (!(lora_dropout >= 0 && lora_dropout < 1))
    throw_error(ErrorKind::Config, context, "lora_dropout must be in [0, 1), got ", lora_dropout);
  if (!all_linear && target_regex.empty() && target_modules.empty())
    throw_error(ErrorKind::Config, context,
                "no target_modules given (a list of module names or \"all-linear\")");
  if (init_lora_weights != "true" && init_lora_weights != "false" && init_lora_weights != "gaussian")
    throw_error(ErrorKind::Config, context, "init_lora_weights '", init_lora_weights,
                "' is not supported for new adapters (true, false, gaussian)");
  if (fan_in_fan_out)
    throw_error(ErrorKind::Unsupported, context, "fan_in_fan_out=true (Conv1D layers) is not supported");
}

void set_target_modules(LoraConfig& cfg, const std::string& comma_list) {
  cfg.target_modules.clear();
  cfg.target_regex.clear();
  cfg.all_linear = false;
  if (comma_list == "all-linear") {
    cfg.all_linear = true;
    return;
  }
  cfg.target_modules = split_comma_list(comma_list);
}

std::vector<std::string> split_comma_list(const std::string& comma_list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= comma_list.size()) {
    size_t end = comma_list.find(',', start);
    if (end == std::string::npos) end = comma_list.size();
    std::string item = comma_list.substr(start, end - start);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (!item.empty()) out.push_back(item);
    start = end + 1;
  }
  return out;
}

LoraConfig read_lora_config(const std::string& path) {
  using nlohmann::json;
  json j = read_json_object_file(path);
  auto field = [&](const char* k) { return json_field(j, k); };
  auto bad = [&](const char* k, const char* want, const json* got = nullptr) {
    throw_error(ErrorKind::Format, path, ": field '", k, "' must be ", want, ", got ",
                got ? got->dump() : json_type_name(j[k]));
  };
  const std::string type = json_peft_type(j, path);
  if (type != "LORA")
    throw_error(ErrorKind::Unsupported, path, ": peft_type '", type, "' is not supported (qtune reads LORA adapters)");
  LoraConfig c;
  if (const json* v = field("r")) {
    if (!v->is_number_integer()) bad("r", "an integer");
    c.r = v->get<int64_t>();
  }
  if (const json* v = field("lora_alpha")) {
    if (!v->is_number()) bad("lora_alpha", "a number");
    c.lora_alpha = v->get<double>();
  }
  if (const json* v = field("lora_dropout")) {
    if (!v->is_number()) bad("lora_dropout", "a number");
    c.lora_dropout = v->get<double>();
  }
  const json* tm = field("target_modules");
  if (!tm) throw_error(ErrorKind::Format, path, ": 'target_modules' is missing");
  if (tm->is_string()) {
    if (tm->get<std::string>() == "all-linear")
      c.all_linear = true;
    else
      c.target_regex = tm->get<std::string>();
  } else if (tm->is_array()) {
    for (const json& t : *tm) {
      if (!t.is_string()) bad("target_modules", "a list of strings", &t);
      c.target_modules.push_back(t.get<std::string>());
    }
  } else {
    bad("target_modules", "a string or a list");
  }
  auto strings = [&](const char* k, std::vector<std::string>& dst) {
    const json* v = field(k);
    if (!v) return;
    if (!v->is_array()) bad(k, "a list of strings");
    for (const json& t : *v) {
      if (!t.is_string()) bad(k, "a list of strings", &t);
      dst.push_back(t.get<std::string>());
    }
  };
  if (const json* v = field("exclude_modules"))
    if (v->is_string())
      throw_error(ErrorKind::Unsupported, path, ": exclude_modules as a regex string is not supported");
  strings("exclude_modules", c.exclude_modules);
  if (const json* v = field("bias")) {
    std::string b = v->is_string() ? v->get<std::string>() : "";
    if (b == "none")
      c.bias = LoraBias::None;
    else if (b == "all")
      c.bias = LoraBias::All;
    else if (b == "lora_only")
      c.bias = LoraBias::LoraOnly;
    else
      throw_error(ErrorKind::Format, path, ": bias must be \"none\", \"all\" or \"lora_only\", got ",
                  v->dump());
  }
  auto flag = [&](const char* k, bool& dst) {
    if (const json* v = field(k)) {
      if (!v->is_boolean()) bad(k, "true or false");
      dst = v->get<bool>();
    }
  };
  flag("use_rslora", c.use_rslora);
  flag("use_dora", c.use_dora);
  flag("fan_in_fan_out", c.fan_in_fan_out);
  flag("inference_mode", c.inference_mode);
  strings("modules_to_save", c.modules_to_save);
  if (const json* v = field("init_lora_weights"))
    c.init_lora_weights = v->is_boolean()  ? (v->get<bool>() ? "true" : "false")
                          : v->is_string() ? v->get<std::string>()
                                           : "?";
  if (const json* v = field("rank_pattern")) {
    if (!v->is_object()) bad("rank_pattern", "an object");
    for (auto it = v->begin(); it != v->end(); ++it) {
      if (!it->is_number_integer()) bad("rank_pattern", "an object of integers", &*it);
      c.rank_pattern[it.key()] = it->get<int64_t>();
    }
  }
  if (const json* v = field("alpha_pattern")) {
    if (!v->is_object()) bad("alpha_pattern", "an object");
    for (auto it = v->begin(); it != v->end(); ++it) {
      if (!it->is_number()) bad("alpha_pattern", "an object of numbers", &*it);
      c.alpha_pattern[it.key()] = it->get<double>();
    }
  }
  if (const json* v = field("base_model_name_or_path"))
    if (v->is_string()) c.base_model_name_or_path = v->get<std::string>();
  if (const json* v = field("task_type"))
    if (v->is_string()) c.task_type = v->get<std::string>();
  // Options that change the math in ways qtune does not implement.
  for (const char* k : {"layers_to_transform", "layers_pattern", "layer_replication", "target_parameters",
                        "trainable_token_indices", "alora_invocation_tokens"}) {
    const json* v = field(k);
    if (v && !(v->is_array() && v->empty()) && !(v->is_string() && v->get<std::string>().empty()))
      throw_error(ErrorKind::Unsupported, path, ": field '", k, "' (", v->dump(), ") is not supported");
  }
  for (const char* k : {"lora_bias", "use_qalora"}) {
    const json* v = field(k);
    if (v && v->is_boolean() && v->get<bool>())
      throw_error(ErrorKind::Unsupported, path, ": field '", k, "' = true is not supported");
  }
  if (c.fan_in_fan_out) throw_error(ErrorKind::Unsupported, path, ": fan_in_fan_out=true is not supported");
  if (c.r <= 0) throw_error(ErrorKind::Format, path, ": r must be > 0, got ", c.r);
  if (!(c.lora_alpha > 0))
    throw_error(ErrorKind::Format, path, ": lora_alpha must be > 0, got ", c.lora_alpha);
  return c;
}

void write_lora_config(const std::string& path, const LoraConfig& c,
                       const std::vector<std::string>& resolved_targets) {
  using nlohmann::json;
  json j = json::object();
  for (const char* k :
       {"alora_invocation_tokens", "arrow_config", "auto_mapping", "corda_config", "eva_config",
        "exclude_modules", "kasa_config", "layer_replication", "layers_pattern", "layers_to_transform",
        "lora_ga_config", "megatron_config", "monteclora_config", "revision", "target_parameters",
        "trainable_token_indices", "use_bdlora", "velora_config"})
    j[k] = nullptr;
  json rp = json::object(), ap = json::object();
  for (const auto& [k, v] : c.rank_pattern) rp[k] = v;
  for (const auto& [k, v] : c.alpha_pattern) ap[k] = v;
  j["alpha_pattern"] = ap;
  j["rank_pattern"] = rp;
  j["base_model_name_or_path"] =
      c.base_model_name_or_path.empty() ? json(nullptr) : json(c.base_model_name_or_path);
  j["bias"] = lora_bias_name(c.bias);
  j["ensure_weight_tying"] = false;
  if (!c.exclude_modules.empty()) j["exclude_modules"] = c.exclude_modules;
  j["fan_in_fan_out"] = c.fan_in_fan_out;
  j["inference_mode"] = true;
  if (c.init_lora_weights == "true" || c.init_lora_weights == "false")
    j["init_lora_weights"] = c.init_lora_weights == "true";
  else
    j["init_lora_weights"] = c.init_lora_weights;
  j["loftq_config"] = json::object();
  if (c.lora_alpha == std::floor(c.lora_alpha) && std::fabs(c.lora_alpha) < 1e15)
    j["lora_alpha"] = (int64_t)c.lora_alpha;
  else
    j["lora_alpha"] = c.lora_alpha;
  j["lora_bias"] = false;
  j["lora_dropout"] = c.lora_dropout;
  j["megatron_core"] = "megatron.core";
  j["modules_to_save"] = c.modules_to_save.empty() ? json(nullptr) : json(c.modules_to_save);
  j["peft_type"] = "LORA";
  j["peft_version"] = "0.21.2";  // the PEFT release whose format this follows
  j["qalora_group_size"] = 16;
  j["r"] = c.r;
  if (!c.target_regex.empty())
    j["target_modules"] = c.target_regex;
  else
    j["target_modules"] = resolved_targets;
  j["task_type"] = c.task_type;
  j["use_dora"] = c.use_dora;
  j["use_qalora"] = false;
  j["use_rslora"] = c.use_rslora;
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

}  // namespace qtune
