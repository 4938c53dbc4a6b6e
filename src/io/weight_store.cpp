// WeightStore: the weights of a model folder seen as one name → tensor map, whether they live in a single
// model.safetensors or in shards listed by model.safetensors.index.json ({"metadata": {...},
// "weight_map": {tensor: shard file}}). Shards are mapped on first use; each is checked to hold every
// tensor the index assigns to it.
#include <algorithm>

#include "io/json_util.h"
#include "io/safetensors.h"

namespace qtune {

using json = nlohmann::json;

static const char* kSingleName = "model.safetensors";
static const char* kIndexName = "model.safetensors.index.json";

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Reads an index file: every weight_map value must be a plain file name (or relative path) that exists.
static void read_index(const std::string& index_path, const std::string& dir,
                       std::map<std::string, std::string>* where) {
  json j = parse_json_text(read_text_file(index_path, ErrorKind::Format), index_path, ErrorKind::Format);
  if (!j.is_object())
    throw_error(ErrorKind::Format, index_path, ": expected a JSON object, got ", json_type_name(j));
  if (!j.contains("weight_map")) throw_error(ErrorKind::Format, index_path, ": missing field 'weight_map'");
  const json& wm = j["weight_map"];
  if (!wm.is_object())
    throw_error(ErrorKind::Format, index_path,
                ": 'weight_map' must be an object of tensor name → shard file, got ", json_type_name(wm));
  if (wm.empty()) throw_error(ErrorKind::Format, index_path, ": 'weight_map' is empty");
  std::map<std::string, bool> checked;  // shard file → exists
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    if (!it.value().is_string() || it.value().get<std::string>().empty())
      throw_error(ErrorKind::Format, index_path, ": weight_map entry for tensor '", it.key(),
                  "' must be a shard file name, got ", json_type_name(it.value()));
    std::string shard = path_join(dir, it.value().get<std::string>());
    auto c = checked.find(shard);
    if (c == checked.end()) c = checked.emplace(shard, path_is_file(shard)).first;
    if (!c->second)
      throw_error(ErrorKind::Format, index_path, ": shard file '", it.value().get<std::string>(),
                  "' (named for tensor '", it.key(), "') does not exist in ", dir);
    (*where)[it.key()] = shard;
  }
}

WeightStore WeightStore::open(const std::string& path) {
  WeightStore ws;
  ws.root_ = path;
  if (path_is_dir(path)) {
    std::string single = path_join(path, kSingleName);
    std::string index = path_join(path, kIndexName);
    if (path_is_file(single)) {  // transformers prefers the single file when both exist
      auto f = SafetensorsFile::open(single);
      for (const TensorInfo& t : f->tensors()) ws.where_[t.name] = single;
      ws.open_[single] = f;
    } else if (path_is_file(index)) {
      read_index(index, path, &ws.where_);
    } else {
      throw_error(ErrorKind::Format, path, ": no weights found: expected ", kSingleName, " or ", kIndexName,
                  " in this folder (or pass a .safetensors file)");
    }
    return ws;
  }
  if (!path_is_file(path)) throw_error(ErrorKind::Io, path, ": no such file or folder");
  if (ends_with(path, ".index.json")) {
    read_index(path, path_parent(path), &ws.where_);
    return ws;
  }
  auto f = SafetensorsFile::open(path);
  for (const TensorInfo& t : f->tensors()) ws.where_[t.name] = path;
  ws.open_[path] = f;
  return ws;
}

std::shared_ptr<SafetensorsFile> WeightStore::shard(const std::string& file) const {
  std::lock_guard<std::mutex> lock(*mu_);
  auto it = open_.find(file);
  if (it != open_.end()) return it->second;
  auto f = SafetensorsFile::open(file);
  for (const auto& kv : where_)
    if (kv.second == file && !f->has(kv.first))
      throw_error(ErrorKind::Format, root_, ": the index places tensor '", kv.first, "' in ", file,
                  ", but that shard has no such tensor");
  open_[file] = f;
  return f;
}

size_t WeightStore::open_shard_count() const {
  std::lock_guard<std::mutex> lock(*mu_);
  return open_.size();
}

bool WeightStore::has(const std::string& name) const {
  return where_.count(name) != 0;
}

std::string WeightStore::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end())
    throw_error(ErrorKind::Format, "no tensor named '", name, "' in the weights at ", root_, " (",
                where_.size(), " tensors)");
  return it->second;
}

Tensor WeightStore::get(const std::string& name) const {
  return shard(file_of(name))->get(name);
}

const TensorInfo& WeightStore::info(const std::string& name) const {
  return shard(file_of(name))->info(name);
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> v;
  v.reserve(where_.size());
  for (const auto& kv : where_) v.push_back(kv.first);
  return v;  // std::map order: sorted
}

}  // namespace qtune
