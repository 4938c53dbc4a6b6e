// Reads generation_config.json (see generation_config.h).
#include "model/generation_config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace qtune {

namespace {

using json = nlohmann::json;

std::vector<int> id_list(const json& v, const std::string& file, const char* field) {
  std::vector<int> ids;
  if (v.is_null()) return ids;
  if (v.is_number_integer()) return {v.get<int>()};
  if (v.is_array()) {
    for (const json& e : v) {
      if (!e.is_number_integer())
        throw_error(ErrorKind::Config, file, ": field '", field, "' must hold integers, got ", e.dump());
      ids.push_back(e.get<int>());
    }
    return ids;
  }
  throw_error(ErrorKind::Config, file, ": field '", field, "' must be an integer or a list, got ", v.dump());
}

template <class T>
T number(const json& j, const char* field, T def, const std::string& file) {
  if (!j.contains(field) || j[field].is_null()) return def;
  if (!j[field].is_number())
    throw_error(ErrorKind::Config, file, ": field '", field, "' must be a number, got ", j[field].dump());
  return j[field].get<T>();
}

}  // namespace

GenerationConfig load_generation_config(const std::string& dir, const ModelConfig& cfg) {
  GenerationConfig g;
  g.eos_token_ids = cfg.eos_token_ids;
  g.bos_token_id = cfg.bos_token_id;
  g.pad_token_id = cfg.pad_token_id;
  std::string file = dir + "/generation_config.json";
  std::ifstream in(file);
  if (!in) return g;
  std::stringstream ss;
  ss << in.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::parse_error& e) {
    throw_error(ErrorKind::Config, file, ": invalid JSON: ", e.what());
  }
  if (!j.is_object()) throw_error(ErrorKind::Config, file, ": expected a JSON object");
  g.from_file = true;
  if (j.contains("eos_token_id")) g.eos_token_ids = id_list(j["eos_token_id"], file, "eos_token_id");
  if (j.contains("bos_token_id") && !j["bos_token_id"].is_null())
    g.bos_token_id = id_list(j["bos_token_id"], file, "bos_token_id").at(0);
  if (j.contains("pad_token_id") && !j["pad_token_id"].is_null()) {
    std::vector<int> pad = id_list(j["pad_token_id"], file, "pad_token_id");
    if (!pad.empty()) g.pad_token_id = pad[0];
  }
  if (j.contains("do_sample") && !j["do_sample"].is_null()) {
    if (!j["do_sample"].is_boolean())
      throw_error(ErrorKind::Config, file, ": field 'do_sample' must be true or false, got ",
                  j["do_sample"].dump());
    g.do_sample = j["do_sample"].get<bool>();
  }
  g.temperature = number<float>(j, "temperature", g.temperature, file);
  g.top_k = number<int>(j, "top_k", g.top_k, file);
  g.top_p = number<float>(j, "top_p", g.top_p, file);
  g.max_new_tokens = number<int>(j, "max_new_tokens", g.max_new_tokens, file);
  return g;
}

}  // namespace qtune
