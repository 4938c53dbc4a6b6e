// BottleneckConfig and its adapter_config.json (see bottleneck_config.h).
#include "peft/bottleneck_config.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_util.h"

namespace qtune {

void BottleneckConfig::apply_defaults(const std::string& context) {
  if (adapter_style != "houlsby" && adapter_style != "pfeiffer")
    throw_error(ErrorKind::Config, context, "adapter_style '", adapter_style,
                "' is unknown (houlsby, pfeiffer)");
  if (bottleneck_size <= 0)
    throw_error(ErrorKind::Config, context, "bottleneck_size must be > 0, got ", bottleneck_size);
  if (target_modules.empty())
    target_modules = adapter_style == "houlsby" ? std::vector<std::string>{"o_proj", "down_proj"}
                                                : std::vector<std::string>{"down_proj"};
}

BottleneckConfig read_bottleneck_config(const std::string& path) {
  using nlohmann::json;
  json j = read_json_object_file(path);
  auto field = [&](const char* k) { return json_field(j, k); };
  auto bad = [&](const char* k, const char* want, const json& got) {
    throw_error(ErrorKind::Format, path, ": field '", k, "' must be ", want, ", got ", got.dump());
  };
  const std::string type = json_peft_type(j, path);
  if (type != "BOTTLENECK")
    throw_error(ErrorKind::Unsupported, path, ": peft_type '", type, "' is not BOTTLENECK");
  BottleneckConfig c;
  if (const json* v = field("adapter_style")) {
    if (!v->is_string()) bad("adapter_style", "\"houlsby\" or \"pfeiffer\"", *v);
    c.adapter_style = v->get<std::string>();
  }
  if (const json* v = field("target_modules")) {
    if (!v->is_array()) bad("target_modules", "a list of strings", *v);
    for (const json& t : *v) {
      if (!t.is_string()) bad("target_modules", "a list of strings", t);
      c.target_modules.push_back(t.get<std::string>());
    }
  }
  const json* r = field("bottleneck_size");
  if (!r) throw_error(ErrorKind::Format, path, ": 'bottleneck_size' is missing");
  if (!r->is_number_integer()) bad("bottleneck_size", "an integer", *r);
  c.bottleneck_size = r->get<int64_t>();
  if (const json* v = field("non_linearity")) {
    if (!v->is_string()) bad("non_linearity", "a string", *v);
    c.non_linearity = adapter_act_from_name(v->get<std::string>(), path + ": ");
  }
  if (const json* v = field("hidden_size")) {
    if (!v->is_number_integer()) bad("hidden_size", "an integer", *v);
    c.hidden_size = v->get<int64_t>();
  }
  if (const json* v = field("base_model_name_or_path"))
    if (v->is_string()) c.base_model_name_or_path = v->get<std::string>();
  if (const json* v = field("task_type"))
    if (v->is_string()) c.task_type = v->get<std::string>();
  c.apply_defaults(path + ": ");
  return c;
}

void write_bottleneck_config(const std::string& path, const BottleneckConfig& c) {
  using nlohmann::json;
  json j = json::object();
  j["adapter_style"] = c.adapter_style;
  j["base_model_name_or_path"] =
      c.base_model_name_or_path.empty() ? json(nullptr) : json(c.base_model_name_or_path);
  j["bottleneck_size"] = c.bottleneck_size;
  j["format_version"] = 1;
  j["hidden_size"] = c.hidden_size;
  j["non_linearity"] = adapter_act_name(c.non_linearity);
  j["peft_type"] = "BOTTLENECK";
  j["target_modules"] = c.target_modules;
  j["task_type"] = c.task_type;
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
