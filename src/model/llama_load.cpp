// LlamaModel::load: the expected tensors (HF names and shapes) for a config, checked against the store
// all at once so one error lists every missing tensor and every wrong shape; then each tensor is put in
// the form of its module's device (CPU: F32, borrowed from the mmap when the file is already F32; CUDA:
// BF16 copies), the device coming from the device map when there is one (device_map.h).
#include <algorithm>
#include <map>
#include <set>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/llama_model.h"
#include "model/quant_load.h"
#include "model/rope_freq.h"
#include "ops/elementwise.h"

namespace qtune {

namespace {

struct Want {
  std::string name;
  Shape shape;
  Tensor* dst;
  Linear* lin = nullptr;     // set for Linear weights (may be stored or loaded quantized: quant_load.h)
  Device dev = Device::CPU;  // its module's device
};

// Converts a loaded (CPU, any float dtype) tensor into the form the device's kernels take: F32 on the CPU
// (the mmap'd tensor itself when the file is F32), BF16 on CUDA. Conversions run on the OpenMP threads.
Tensor to_device_form(const Tensor& t, Device device) {
  DType want = device == Device::CPU ? DType::F32 : DType::BF16;
  Tensor host = t;
  if (t.dtype() != want) {
    host = Tensor::empty(t.shape(), want);
    convert(host, t);
  }
  return host.to(device);
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); i++) s += (i ? sep : "") + v[i];
  return s;
}

}  // namespace

LlamaModel LlamaModel::load(const std::string& dir, Device device, const LoadOptions& opts) {
  ModelConfig cfg = load_model_config(dir);
  bool prequantized = false;
  LoadOptions resolved = resolve_load_options(dir, opts, &prequantized);
  resolved.device_map = opts.device_map;  // a run-time choice, whatever the folder's quantization_config
  WeightStore store = WeightStore::open(dir);
  return from_store(cfg, store, device, resolved);
}

LlamaModel LlamaModel::from_store(const ModelConfig& cfg, const WeightStore& store, Device device,
                                  const LoadOptions& opts) {
  LlamaModel m;
  m.cfg_ = cfg;
  m.source_ = store.root();
  const int64_t C = cfg.hidden_size, F = cfg.intermediate_size, V = cfg.vocab_size, D = cfg.head_dim;
  const int64_t Hq = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;
  if (C <= 0 || F <= 0 || V <= 0 || D <= 0 || Hq <= 0 || Hkv <= 0 || Hq % Hkv != 0 || D % 2 != 0)
    throw_error(ErrorKind::Config, store.root(), ": inconsistent config: hidden ", C, ", intermediate ", F,
                ", vocab ", V, ", head_dim ", D, ", heads ", Hq, ", kv heads ", Hkv);
  m.map_ = place_modules(cfg, opts, device);  // uniform(device) without a device map
  device = m.map_.primary();
  m.device_ = device;
  m.act_dtype_ = device == Device::CPU ? DType::F32 : DType::BF16;

  const DeviceMap& map = m.map_;
  std::vector<Want> want;
  want.push_back({"model.embed_tokens.weight", {V, C}, &m.embed_, nullptr, map.embed});
  want.push_back({"model.norm.weight", {C}, &m.norm_, nullptr, map.norm});
  m.lm_head_.name = "lm_head";
  if (!cfg.tie_word_embeddings)
    want.push_back({"lm_head.weight", {V, C}, &m.lm_head_.weight, &m.lm_head_, map.lm_head});
  m.layers_.resize(cfg.num_hidden_layers);
  for (int i = 0; i < cfg.num_hidden_layers; i++) {
    LlamaLayer& L = m.layers_[i];
    L.device = map.layers[i];
    std::string p = "model.layers." + std::to_string(i) + ".";
    want.push_back({p + "input_layernorm.weight", {C}, &L.input_norm, nullptr, L.device});
    want.push_back({p + "post_attention_layernorm.weight", {C}, &L.post_norm, nullptr, L.device});
    struct Lin {
      Linear* lin;
      const char* name;
      int64_t out, in;
      bool bias;
    };
    for (Lin l :
         {Lin{&L.q, "self_attn.q_proj", Hq * D, C, cfg.attention_bias},
          Lin{&L.k, "self_attn.k_proj", Hkv * D, C, cfg.attention_bias},
          Lin{&L.v, "self_attn.v_proj", Hkv * D, C, cfg.attention_bias},
          Lin{&L.o, "self_attn.o_proj", C, Hq * D, cfg.o_proj_bias},
          Lin{&L.gate, "mlp.gate_proj", F, C, cfg.mlp_bias}, Lin{&L.up, "mlp.up_proj", F, C, cfg.mlp_bias},
          Lin{&L.down, "mlp.down_proj", C, F, cfg.mlp_bias}}) {
      l.lin->name = p + l.name;
      want.push_back({l.lin->name + ".weight", {l.out, l.in}, &l.lin->weight, l.lin, L.device});
      if (l.bias) want.push_back({l.lin->name + ".bias", {l.out}, &l.lin->bias, nullptr, L.device});
    }
  }

  // Check everything first, so one error says all that is wrong.
  std::vector<std::string> missing, bad_shape;
  for (const Want& w : want) {
    if (!store.has(w.name)) {
      missing.push_back(w.name);
      continue;
    }
    const TensorInfo& info = store.info(w.name);
    if (w.lin) {
      std::string problem = check_linear_entries(store, w.lin->name, w.shape, opts);
      if (!problem.empty()) bad_shape.push_back(problem);
    } else if (info.shape != w.shape)
      bad_shape.push_back(w.name + ": expected " + shape_str(w.shape) + ", got " + shape_str(info.shape) +
                          " (" + dtype_name(info.dtype) + ")");
    else if (info.dtype != DType::F32 && info.dtype != DType::BF16 && info.dtype != DType::F16)
      bad_shape.push_back(w.name + ": dtype " + std::string(dtype_name(info.dtype)) +
                          " is not a float type (F32, BF16, F16)");
  }
  if (!missing.empty() || !bad_shape.empty()) {
    std::string msg = "model folder " + store.root() + " (" + cfg.architecture + "):";
    if (!missing.empty())
      msg += " missing " + std::to_string(missing.size()) + " tensor(s): " + join(missing, ", ") + ".";
    if (!bad_shape.empty()) msg += " wrong tensor(s): " + join(bad_shape, "; ") + ".";
    throw Error(ErrorKind::Format, msg);
  }

  // A split model keeps its CPU modules' 16/32-bit weights dense f32 (transformers'
  // llm_int8_enable_fp32_cpu_offload); weights stored quantized load quantized wherever they go.
  LoadOptions cpu_opts = opts;
  if (map.split()) cpu_opts.load_in_4bit = cpu_opts.load_in_8bit = false;
  std::vector<std::string> quant_used;
  for (const Want& w : want) {
    const LoadOptions& o = w.dev == Device::CPU ? cpu_opts : opts;
    if (!w.lin || !load_quantized_linear(*w.lin, store, o, w.dev, &quant_used))
      *w.dst = to_device_form(store.get(w.name), w.dev);
  }
  if (cfg.tie_word_embeddings)  // shared when both sit on one device, else a copy on the head's device
    m.lm_head_.weight = map.lm_head == map.embed
                            ? m.embed_
                            : to_device_form(store.get("model.embed_tokens.weight"), map.lm_head);

  std::set<std::string> used(quant_used.begin(), quant_used.end());
  for (const Want& w : want) used.insert(w.name);
  for (const std::string& n : store.names())
    if (!used.count(n) && n.find("rotary_emb.inv_freq") == std::string::npos &&
        !(cfg.tie_word_embeddings && n == "lm_head.weight"))
      m.unused_.push_back(n);

  std::vector<float> inv = rope_inv_freq(cfg);
  m.inv_freq_ = Tensor::from_f32(inv, {(int64_t)inv.size()}).to(device);
  return m;
}

}  // namespace qtune
