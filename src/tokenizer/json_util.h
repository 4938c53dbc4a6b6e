// Small helpers for reading tokenizer.json / tokenizer_config.json fields the way HF reads them: a missing or
// null boolean takes its default. A field of the wrong type throws nlohmann::json::type_error, which the
// loaders turn into ErrorKind::Format naming the file.
#pragma once
#include <nlohmann/json.hpp>

namespace qtune {

inline bool json_bool(const nlohmann::json& j, const char* key, bool dflt) {
  if (!j.contains(key) || j.at(key).is_null()) return dflt;
  return j.at(key).get<bool>();
}

}  // namespace qtune
