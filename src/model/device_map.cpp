// Device maps (device_map.h): parsing the flag / JSON forms, resolving module names against a model's
// layer count, the auto planner and its default GPU budget.
#include "model/device_map.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "core/allocator.h"
#include "core/error.h"
#include "io/hf_config.h"
#include "io/json_util.h"
#include "model/load_options.h"
#include "model/quant_load.h"
#ifdef QTUNE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace qtune {

namespace {

const char* kKnownModules =
    "model.embed_tokens, model.layers.N, model.layers.A-B, model.layers, model.norm, lm_head, model, or \"\" "
    "in JSON for everything";

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace((unsigned char)s[b])) b++;
  while (e > b && std::isspace((unsigned char)s[e - 1])) e--;
  return s.substr(b, e - b);
}

std::string lower(std::string s) {
  for (char& c : s) c = (char)std::tolower((unsigned char)c);
  return s;
}

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

const char* dev_word(Device d) {
  return d == Device::CPU ? "cpu" : "cuda";
}

Device parse_device(const std::string& value, const std::string& ctx) {
  const std::string v = lower(trim(value));
  if (v == "cpu") return Device::CPU;
  if (v == "cuda" || v == "cuda:0" || v == "gpu" || v == "0") return Device::CUDA;
  if (v == "disk" || v == "meta")
    throw_error(ErrorKind::Usage, ctx, ": device \"", value,
                "\": qtune does not offload to disk; use cpu (weights in host memory)");
  if (all_digits(v) || (v.compare(0, 5, "cuda:") == 0 && all_digits(v.substr(5))))
    throw_error(ErrorKind::Usage, ctx, ": device \"", value, "\": qtune runs on one GPU (cuda, cuda:0 or 0)");
  throw_error(ErrorKind::Usage, ctx, ": unknown device \"", value, "\" (cpu, cuda, cuda:0 or 0)");
}

// Module indices: 0 = embedding, 1..L = layers, L+1 = final norm, L+2 = LM head.
std::string module_name(int idx, int L) {
  if (idx == 0) return "model.embed_tokens";
  if (idx <= L) return "model.layers." + std::to_string(idx - 1);
  return idx == L + 1 ? "model.norm" : "lm_head";
}

int parse_layer_index(const std::string& s, const std::string& key, int L, const std::string& src) {
  if (!all_digits(s) || s.size() > 9)
    throw_error(ErrorKind::Usage, src, ": \"", key, "\": \"", s,
                "\" is not a layer index (model.layers.N or ", "model.layers.A-B)");
  const int i = std::atoi(s.c_str());
  if (i >= L)
    throw_error(ErrorKind::Usage, src, ": \"", key, "\": layer ", i, " does not exist (the model has ", L,
                " layers, 0-", L - 1, ")");
  return i;
}

// The modules a key covers (indices as above).
std::vector<int> modules_of(const std::string& key, int L, const std::string& src) {
  std::vector<int> out;
  auto layers = [&](int a, int b) {
    for (int i = a; i <= b; i++) out.push_back(1 + i);
  };
  if (key.empty()) {
    for (int i = 0; i < L + 3; i++) out.push_back(i);
  } else if (key == "model") {
    for (int i = 0; i < L + 2; i++) out.push_back(i);
  } else if (key == "model.embed_tokens") {
    out.push_back(0);
  } else if (key == "model.layers") {
    layers(0, L - 1);
  } else if (key == "model.norm") {
    out.push_back(L + 1);
  } else if (key == "lm_head") {
    out.push_back(L + 2);
  } else if (key == "model.rotary_emb") {
    // no weights: HF maps list it; nothing to place
  } else if (key.compare(0, 13, "model.layers.") == 0) {
    std::string rest = key.substr(13);
    const size_t dot = rest.find('.');
    if (dot != std::string::npos)
      throw_error(ErrorKind::Usage, src, ": \"", key, "\" is finer than a decoder layer; qtune places whole ",
                  "layers (use model.layers.", rest.substr(0, dot), ")");
    const size_t dash = rest.find('-');
    if (dash == std::string::npos) {
      int i = parse_layer_index(rest, key, L, src);
      layers(i, i);
    } else {
      int a = parse_layer_index(rest.substr(0, dash), key, L, src);
      int b = parse_layer_index(rest.substr(dash + 1), key, L, src);
      if (a > b)
        throw_error(ErrorKind::Usage, src, ": \"", key, "\": the range starts after it ends (write ",
                    "model.layers.", b, "-", a, ")");
      layers(a, b);
    }
  } else {
    throw_error(ErrorKind::Usage, src, ": unknown module \"", key, "\" (", kKnownModules, ")");
  }
  return out;
}

DeviceMapSpec parse_json_map(const std::string& text, const std::string& src) {
  nlohmann::json j = parse_json_text(text, src, ErrorKind::Usage);
  if (!j.is_object() || j.empty())
    throw_error(ErrorKind::Usage, src,
                ": a device map must be a non-empty JSON object {\"module\": device}, ", "got ",
                j.is_object() ? "an empty object" : json_type_name(j));
  DeviceMapSpec s;
  s.kind = DeviceMapSpec::Kind::Explicit;
  s.source = src;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string ctx = src + ": \"" + it.key() + "\"";
    const nlohmann::json& v = it.value();
    Device d;
    if (v.is_number_integer() || v.is_number_unsigned())
      d = parse_device(std::to_string(v.get<int64_t>()), ctx);
    else if (v.is_string())
      d = parse_device(v.get<std::string>(), ctx);
    else
      throw_error(ErrorKind::Usage, ctx, ": expected a device (\"cpu\", \"cuda\" or 0), got ",
                  json_type_name(v));
    s.entries.emplace_back(it.key(), d);
  }
  return s;
}

}  // namespace

DeviceMapSpec parse_device_map(const std::string& text_in) {
  const std::string text = trim(text_in);
  const std::string src = "--device-map";
  if (text.empty()) throw_error(ErrorKind::Usage, src, ": empty (auto, module=device,... or a JSON file)");
  const std::string low = lower(text);
  if (low == "auto") {
    DeviceMapSpec s;
    s.kind = DeviceMapSpec::Kind::Auto;
    return s;
  }
  if (low == "balanced" || low == "balanced_low_0" || low == "sequential")
    throw_error(ErrorKind::Usage, src, ": \"", text,
                "\" spreads over several GPUs; qtune uses one GPU and the ", "CPU: use auto");
  if (text[0] == '{') return parse_json_map(text, src);
  if (path_is_file(text) || (text.size() > 5 && low.compare(text.size() - 5, 5, ".json") == 0))
    return parse_json_map(read_text_file(text, ErrorKind::Usage), text);

  DeviceMapSpec s;
  s.kind = DeviceMapSpec::Kind::Explicit;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    const std::string item = trim(text.substr(start, comma - start));
    start = comma + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    if (eq == std::string::npos)
      throw_error(ErrorKind::Usage, src, ": \"", item, "\" has no \"=device\" (write module=device, e.g. ",
                  "model.layers.0-15=cuda)");
    const std::string key = trim(item.substr(0, eq));
    if (key.empty())
      throw_error(ErrorKind::Usage, src, ": \"", item, "\" has an empty module name (", kKnownModules, ")");
    s.entries.emplace_back(key, parse_device(item.substr(eq + 1), src + ": \"" + key + "\""));
  }
  if (s.entries.empty()) throw_error(ErrorKind::Usage, src, ": no module=device entries in \"", text, "\"");
  return s;
}

int64_t parse_memory_size(const std::string& text_in, const std::string& what) {
  const std::string text = trim(text_in);
  size_t i = 0;
  while (i < text.size() && (std::isdigit((unsigned char)text[i]) || text[i] == '.')) i++;
  const std::string num = text.substr(0, i), unit = lower(trim(text.substr(i)));
  char* end = nullptr;
  const double v = num.empty() ? -1 : std::strtod(num.c_str(), &end);
  double mul = -1;
  if (unit.empty() || unit == "b") mul = 1;
  if (unit == "kib") mul = 1024.0;
  if (unit == "mib") mul = 1024.0 * 1024;
  if (unit == "gib") mul = 1024.0 * 1024 * 1024;
  if (unit == "tib") mul = 1024.0 * 1024 * 1024 * 1024;
  if (unit == "kb") mul = 1e3;
  if (unit == "mb") mul = 1e6;
  if (unit == "gb") mul = 1e9;
  if (unit == "tb") mul = 1e12;
  if (num.empty() || end != num.c_str() + num.size() || mul < 0 || !(v > 0) || v * mul >= 9.2e18)
    throw_error(ErrorKind::Usage, what, ": \"", text_in,
                "\" is not a memory size (e.g. 20GiB, 512MiB, 20GB or ", "a byte count)");
  return (int64_t)std::llround(v * mul);
}

DeviceMap DeviceMap::uniform(int num_layers, Device d) {
  DeviceMap m;
  m.embed = m.norm = m.lm_head = d;
  m.layers.assign(num_layers, d);
  return m;
}

int DeviceMap::layers_on(Device d) const {
  return (int)std::count(layers.begin(), layers.end(), d);
}

Device DeviceMap::primary() const {
  const bool gpu =
      embed == Device::CUDA || norm == Device::CUDA || lm_head == Device::CUDA || layers_on(Device::CUDA) > 0;
  return gpu ? Device::CUDA : Device::CPU;
}

bool DeviceMap::split() const {
  const bool cpu =
      embed == Device::CPU || norm == Device::CPU || lm_head == Device::CPU || layers_on(Device::CPU) > 0;
  return cpu && primary() == Device::CUDA;
}

std::string DeviceMap::describe() const {
  std::string s = std::string("model.embed_tokens=") + dev_word(embed);
  for (size_t a = 0; a < layers.size();) {
    size_t b = a;
    while (b + 1 < layers.size() && layers[b + 1] == layers[a]) b++;
    s += ",model.layers." + std::to_string(a) + (b > a ? "-" + std::to_string(b) : "") + "=" +
         dev_word(layers[a]);
    a = b + 1;
  }
  return s + ",model.norm=" + dev_word(norm) + ",lm_head=" + dev_word(lm_head);
}

DeviceMap resolve_device_map(const DeviceMapSpec& spec, int L) {
  QT_CHECK(spec.kind == DeviceMapSpec::Kind::Explicit);
  const std::string& src = spec.source;
  std::vector<int> owner(L + 3, -1);  // the entry placing each module
  std::vector<Device> dev(L + 3, Device::CPU);
  for (size_t e = 0; e < spec.entries.size(); e++) {
    const std::string& key = spec.entries[e].first;
    for (int m : modules_of(key, L, src)) {
      if (owner[m] >= 0)
        throw_error(ErrorKind::Usage, src, ": \"", spec.entries[owner[m]].first, "\" and \"", key,
                    "\" overlap: both place ", module_name(m, L));
      owner[m] = (int)e;
      dev[m] = spec.entries[e].second;
    }
  }
  std::string missing;
  for (int m = 0; m < L + 3;) {  // uncovered modules, consecutive layers as one range
    if (owner[m] >= 0) {
      m++;
      continue;
    }
    int n = m;
    while (n + 1 <= L && m >= 1 && owner[n + 1] < 0) n++;
    missing += (missing.empty() ? "" : ", ") + module_name(m, L);
    if (n > m) missing += "-" + std::to_string(n - 1);
    m = n + 1;
  }
  if (!missing.empty())
    throw_error(ErrorKind::Usage, src, ": no device for ", missing,
                " (every module needs one: ", kKnownModules, ")");
  DeviceMap map;
  map.embed = dev[0];
  map.layers.assign(dev.begin() + 1, dev.begin() + 1 + L);
  map.norm = dev[L + 1];
  map.lm_head = dev[L + 2];
  return map;
}

ModuleSizes module_gpu_sizes(const ModelConfig& cfg, const LoadOptions& opts) {
  const int64_t C = cfg.hidden_size, F = cfg.intermediate_size, V = cfg.vocab_size, D = cfg.head_dim;
  const int64_t Hq = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;
  auto lin = [&](const std::string& name, int64_t O, int64_t I, bool bias) -> int64_t {
    const int64_t n = O * I, b = bias ? 2 * O : 0;
    if (opts.load_in_4bit && !skip_quantization(opts, name))  // packed nibbles + an absmax per block
      return n / 2 + (n + opts.blocksize - 1) / opts.blocksize * (opts.double_quant ? 1 : 4) + b;
    if (opts.load_in_8bit && !skip_quantization(opts, name)) return n + 4 * O + b;  // int8 + row scales
    return 2 * n + b;
  };
  ModuleSizes s;
  s.embed = 2 * V * C;
  s.norm = 2 * C;
  s.lm_head_tied = cfg.tie_word_embeddings;
  s.lm_head = lin("lm_head", V, C, false);
  for (int i = 0; i < cfg.num_hidden_layers; i++) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    s.layers.push_back(4 * C + lin(p + "self_attn.q_proj", Hq * D, C, cfg.attention_bias) +
                       lin(p + "self_attn.k_proj", Hkv * D, C, cfg.attention_bias) +
                       lin(p + "self_attn.v_proj", Hkv * D, C, cfg.attention_bias) +
                       lin(p + "self_attn.o_proj", C, Hq * D, cfg.o_proj_bias) +
                       lin(p + "mlp.gate_proj", F, C, cfg.mlp_bias) +
                       lin(p + "mlp.up_proj", F, C, cfg.mlp_bias) +
                       lin(p + "mlp.down_proj", C, F, cfg.mlp_bias));
  }
  return s;
}

DeviceMap plan_auto_device_map(const ModuleSizes& sizes, int64_t budget) {
  DeviceMap m;
  int64_t used = 0;
  bool spilled = false;
  auto place = [&](int64_t bytes) {
    if (!spilled && used + bytes <= budget) {
      used += bytes;
      return Device::CUDA;
    }
    spilled = true;
    return Device::CPU;
  };
  m.embed = place(sizes.embed);
  for (int64_t b : sizes.layers) m.layers.push_back(place(b));
  m.norm = place(sizes.norm);
  m.lm_head = place(sizes.lm_head_tied && m.embed == Device::CUDA ? 0 : sizes.lm_head);
  return m;
}

int64_t default_gpu_budget(const ModelConfig& cfg) {
#ifdef QTUNE_HAVE_CUDA
  if (!cuda_available()) return 0;
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  const DeviceMemoryStats st = device_memory_stats();
  const int64_t avail = (int64_t)free_b + (int64_t)(st.reserved - st.in_use);
  const int64_t tokens = std::min(cfg.max_position_embeddings, 4096);
  const int64_t kv = 2LL * cfg.num_hidden_layers * tokens * cfg.num_key_value_heads * cfg.head_dim * 2;
  return std::max<int64_t>(0, avail - kv - (1LL << 30));
#else
  (void)cfg;
  return 0;
#endif
}

DeviceMap place_modules(const ModelConfig& cfg, const LoadOptions& opts, Device device) {
  const DeviceMapSpec& s = opts.device_map;
  const int L = cfg.num_hidden_layers;
  if (!s.enabled()) return DeviceMap::uniform(L, device);
  if (s.kind == DeviceMapSpec::Kind::Explicit) {
    DeviceMap m = resolve_device_map(s, L);
    if (m.primary() == Device::CUDA && !cuda_available())
      throw_error(ErrorKind::Unsupported, s.source, " places modules on cuda but no usable GPU is present (",
                  "run `qtune env` for details)");
    return m;
  }
  if (!cuda_available()) return DeviceMap::uniform(L, Device::CPU);
  const int64_t budget = s.max_gpu_bytes > 0 ? s.max_gpu_bytes : default_gpu_budget(cfg);
  return plan_auto_device_map(module_gpu_sizes(cfg, opts), budget);
}

}  // namespace qtune
