// Writing a Hugging Face model folder: weight shards + index, side files (see model_folder.h).
#include "io/model_folder.h"

#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/error.h"
#include "io/json_util.h"
#include "io/safetensors.h"

namespace qtune {

namespace fs = std::filesystem;

int64_t parse_shard_size(const std::string& s) {
  std::string u;
  for (char c : s) u += (char)std::toupper((unsigned char)c);
  struct Unit {
    const char* suffix;
    int64_t mult;
  };
  // Longer suffixes first: "GIB" before "B".
  const Unit units[] = {{"GIB", 1LL << 30}, {"MIB", 1LL << 20}, {"KIB", 1LL << 10}, {"GB", 1000000000LL},
                        {"MB", 1000000LL},  {"KB", 1000LL},     {"B", 1},           {"", 1}};
  for (const Unit& unit : units) {
    const size_t n = std::strlen(unit.suffix);
    if (u.size() <= n || u.compare(u.size() - n, n, unit.suffix) != 0) continue;
    const std::string num = u.substr(0, u.size() - n);
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(num, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != num.size() || v <= 0) break;
    return (int64_t)v * unit.mult;
  }
  throw_error(ErrorKind::Usage, "shard size '", s, "' is not a size like 5GB, 500MB, 2GiB or a byte count");
}

std::vector<std::vector<size_t>> plan_shards(const std::vector<int64_t>& group_bytes, int64_t max_bytes) {
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> open;
  int64_t open_bytes = 0;
  for (size_t g = 0; g < group_bytes.size(); ++g) {
    if (group_bytes[g] > max_bytes) {
      shards.push_back({g});
      continue;
    }
    if (open_bytes + group_bytes[g] > max_bytes) {
      shards.push_back(open);
      open.clear();
      open_bytes = 0;
    }
    open.push_back(g);
    open_bytes += group_bytes[g];
  }
  if (!open.empty() || shards.empty()) shards.push_back(open);
  return shards;
}

void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  if (!f) throw_error(ErrorKind::Io, "cannot write ", path);
}

int64_t write_weight_shards(const std::string& dir, int n_shards,
                            const std::function<ShardTensors(int)>& make_shard) {
  QT_CHECK(n_shards >= 1, "write_weight_shards: n_shards ", n_shards);
  std::error_code ec;
  static const std::regex stale(R"(model(\.safetensors(\.index\.json)?|-\d+-of-\d+\.safetensors))");
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (std::regex_match(e.path().filename().string(), stale)) fs::remove(e.path(), ec);
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  int64_t total = 0;
  nlohmann::json index;
  for (int i = 0; i < n_shards; ++i) {
    char fname[64];
    if (n_shards == 1)
      std::snprintf(fname, sizeof fname, "model.safetensors");
    else
      std::snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", i + 1, n_shards);
    ShardTensors tensors = make_shard(i);
    for (const auto& kv : tensors) {
      total += (int64_t)kv.second.nbytes();
      index["weight_map"][kv.first] = fname;
    }
    write_safetensors(path_join(dir, fname), tensors, meta);
  }
  if (n_shards > 1) {
    index["metadata"]["total_size"] = total;
    write_text_file(path_join(dir, "model.safetensors.index.json"), index.dump(2) + "\n");
  }
  return total;
}

void copy_model_side_files(const std::string& from, const std::string& to) {
  static const char* files[] = {"tokenizer.json",
                                "tokenizer_config.json",
                                "tokenizer.model",
                                "special_tokens_map.json",
                                "added_tokens.json",
                                "vocab.json",
                                "merges.txt",
                                "chat_template.jinja",
                                "generation_config.json"};
  for (const char* f : files) {
    if (!path_is_file(path_join(from, f))) continue;
    std::error_code ec;
    fs::copy_file(path_join(from, f), path_join(to, f), fs::copy_options::overwrite_existing, ec);
    if (ec) throw_error(ErrorKind::Io, "cannot copy ", f, " to ", to, ": ", ec.message());
  }
}

}  // namespace qtune
