// The `qtune inspect` report: tensor listing, parameter totals, bytes per dtype and weight-memory
// estimates (stored / bf16 / NF4 as bitsandbytes QLoRA lays it out), and the config summary.
#include "io/inspect.h"

#include <algorithm>
#include <cstdio>
#include <set>
#include <sstream>

#include "io/json_util.h"

namespace qtune {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Weights that QLoRA-style loading quantizes: 2-D float Linear weights, not embeddings nor the LM head.
bool quantizable(const TensorInfo& t) {
  bool is_float = t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16;
  return is_float && t.shape.size() == 2 && ends_with(t.name, ".weight") &&
         t.name.find("embed_tokens") == std::string::npos && t.name.find("lm_head") == std::string::npos;
}

uint64_t ceil_div(uint64_t a, uint64_t b) {
  return (a + b - 1) / b;
}

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < s.size(); i++) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return (v < 0 ? "-" : "") + out;
}

std::string short_count(int64_t n) {
  char buf[32];
  if (n >= 1000000000)
    std::snprintf(buf, sizeof buf, "%.2f B", n / 1e9);
  else if (n >= 1000000)
    std::snprintf(buf, sizeof buf, "%.2f M", n / 1e6);
  else if (n >= 1000)
    std::snprintf(buf, sizeof buf, "%.1f K", n / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%lld", (long long)n);
  return buf;
}

}  // namespace

std::string format_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)n;
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, u++;
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", (unsigned long long)n);
  else
    std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

WeightSummary summarize_weights(const WeightStore& ws) {
  WeightSummary s;
  for (const std::string& name : ws.names()) {
    const TensorInfo& t = ws.info(name);
    uint64_t n = (uint64_t)shape_numel(t.shape);
    uint64_t bytes = t.end - t.begin;
    s.num_tensors++;
    s.num_params += (int64_t)n;
    s.bytes_by_dtype[dtype_name(t.dtype)] += bytes;
    s.bytes_stored += bytes;
    s.bytes_bf16 += 2 * n;
    if (quantizable(t)) {
      s.num_quantizable_params += (int64_t)n;
      uint64_t blocks = ceil_div(n, 64);
      s.bytes_nf4 += ceil_div(n, 2) + 4 * blocks;
      s.bytes_nf4_dq += ceil_div(n, 2) + blocks + 4 * ceil_div(blocks, 256) + 4;
    } else {
      s.bytes_nf4 += 2 * n;
      s.bytes_nf4_dq += 2 * n;
    }
  }
  return s;
}

std::string describe_model_config(const ModelConfig& c) {
  std::ostringstream os;
  os << c.architecture << " (" << c.model_type << "): " << c.num_hidden_layers << " layers, hidden "
     << c.hidden_size << ", intermediate " << c.intermediate_size << ", heads " << c.num_attention_heads
     << " (kv " << c.num_key_value_heads << ", head_dim " << c.head_dim << "), vocab " << c.vocab_size
     << ", max positions " << c.max_position_embeddings << ", rms_norm_eps " << c.rms_norm_eps
     << ", rope theta " << c.rope_theta;
  if (!c.rope_scaling.type.empty()) {
    os << " (" << c.rope_scaling.type << " factor " << c.rope_scaling.factor;
    if (c.rope_scaling.type == "llama3")
      os << ", low/high freq " << c.rope_scaling.low_freq_factor << "/" << c.rope_scaling.high_freq_factor
         << ", original context " << c.rope_scaling.original_max_position_embeddings;
    os << ")";
  }
  os << ", " << (c.tie_word_embeddings ? "tied" : "untied") << " embeddings";
  if (c.attention_bias) os << ", q/k/v bias" << (c.o_proj_bias ? " + o bias" : "");
  if (c.mlp_bias) os << ", mlp bias";
  if (c.sliding_window) os << ", sliding window " << c.sliding_window;
  os << ", dtype " << c.torch_dtype << ", eos [";
  for (size_t i = 0; i < c.eos_token_ids.size(); i++) os << (i ? ", " : "") << c.eos_token_ids[i];
  os << "]";
  return os.str();
}

std::string inspect_report(const std::string& path) {
  WeightStore ws = WeightStore::open(path);
  std::vector<std::string> names = ws.names();
  std::ostringstream os;
  os << "weights: " << path << "\n";

  std::set<std::string> files;
  size_t w_name = 4, w_shape = 5;
  for (const std::string& n : names) {
    files.insert(ws.file_of(n));
    w_name = std::max(w_name, n.size());
    w_shape = std::max(w_shape, shape_str(ws.info(n).shape).size());
  }
  os << "files: " << files.size() << (files.size() == 1 ? " (" + *files.begin() + ")" : "") << "\n";
  os << "tensors: " << names.size() << "\n";
  for (const std::string& n : names) {
    const TensorInfo& t = ws.info(n);
    std::string sh = shape_str(t.shape);
    os << "  " << n << std::string(w_name - n.size() + 2, ' ') << dtype_name(t.dtype)
       << std::string(6 - std::string(dtype_name(t.dtype)).size(), ' ') << sh
       << std::string(w_shape - sh.size() + 2, ' ') << with_commas(shape_numel(t.shape)) << "\n";
  }

  WeightSummary s = summarize_weights(ws);
  os << "parameters: " << with_commas(s.num_params) << " (" << short_count(s.num_params) << "), of which "
     << with_commas(s.num_quantizable_params) << " in Linear weights\n";
  os << "bytes by dtype:\n";
  for (const auto& kv : s.bytes_by_dtype)
    os << "  " << kv.first << std::string(6 - kv.first.size(), ' ') << with_commas((int64_t)kv.second) << " ("
       << format_bytes(kv.second) << ")\n";
  os << "weight memory estimate:\n";
  os << "  as stored:            " << format_bytes(s.bytes_stored) << "\n";
  os << "  bf16:                 " << format_bytes(s.bytes_bf16) << "\n";
  os << "  nf4 (Linear weights 4-bit + f32 absmax per 64, rest bf16): " << format_bytes(s.bytes_nf4) << "\n";
  os << "  nf4 + double quant:   " << format_bytes(s.bytes_nf4_dq) << "\n";

  std::string dir = path_is_dir(path) ? path : path_parent(path);
  std::string cfg = path_join(dir, "config.json");
  if (path_is_file(cfg)) {
    try {
      os << "config: " << describe_model_config(load_model_config(cfg)) << "\n";
    } catch (const Error& e) {
      os << "config: error: " << e.what() << "\n";
    }
  } else {
    os << "config: none (no config.json in " << dir << ")\n";
  }
  return os.str();
}

}  // namespace qtune
