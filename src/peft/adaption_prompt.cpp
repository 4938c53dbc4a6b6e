// LLaMA-Adapter (ADAPTION_PROMPT): config, PEFT folder I/O and the gated prompt attention (see
// adaption_prompt.h). The prompt attention reuses the cached-attention op: each of the N = B·T queries is
// its own sequence of one token at position adapter_len − 1 over a cache holding the adapter_len prompt
// rows, so it sees all of them (no causal cut); the gate is folded into V.
#include "peft/adaption_prompt.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "core/error.h"
#include "io/json_util.h"
#include "io/safetensors.h"
#include "ops/ops.h"

namespace qtune {

namespace {

std::string key(int layer, const char* what) {
  return "base_model.model.model.layers." + std::to_string(layer) + ".self_attn." + what;
}

// The attention add-on of one adapted layer.
class GatedPromptAttention : public AttentionAdapter {
 public:
  GatedPromptAttention(Tensor k, Tensor v) : k_(std::move(k)), v_(std::move(v)) {}

  // q [B, T, Hq, D] → proj [N, C] += o_proj(softmax(q·Kᵀ/√D)·(g·V)).
  void forward(Tensor& proj, const Tensor& q, const LlamaLayer& layer) const override {
    const int64_t N = q.size(0) * q.size(1), Hq = q.size(2), D = q.size(3), Lp = k_.size(1);
    ensure_rows(N);
    Tensor kr = k_rep_.slice0(0, N), vr = v_rep_.slice0(0, N);  // [N, Lp, Hkv, D]
    Tensor att = Tensor::empty({N, 1, Hq, D}, q.dtype(), q.device());
    attention_forward(att, q.reshape({N, 1, Hq, D}), kr, vr, Lp - 1, Lp);
    Tensor o = Tensor::empty(proj.shape(), proj.dtype(), proj.device());
    layer.o.forward(o, att.reshape({N, Hq * D}));
    add_inplace(proj, o);
  }

 private:
  // k_rep_, v_rep_ hold at least n copies of the prompt rows (grown by doubling copies).
  void ensure_rows(int64_t n) const {
    if (k_rep_.defined() && k_rep_.size(0) >= n) return;
    Shape s = k_.shape();
    s[0] = std::max<int64_t>(n, k_rep_.defined() ? 2 * k_rep_.size(0) : 1);
    k_rep_ = Tensor::empty(s, k_.dtype(), k_.device());
    v_rep_ = Tensor::empty(s, v_.dtype(), v_.device());
    for (Tensor* t : {&k_rep_, &v_rep_}) {
      Tensor first = t->slice0(0, 1);
      first.copy_from(t == &k_rep_ ? k_ : v_);
      for (int64_t have = 1; have < s[0]; have *= 2) {
        const int64_t m = std::min(have, s[0] - have);
        Tensor dst = t->slice0(have, m);
        dst.copy_from(t->slice0(0, m));
      }
    }
  }

  Tensor k_, v_;  // [1, Lp, Hkv, D] in the model's activation dtype; v times the gate
  mutable Tensor k_rep_, v_rep_;
};

}  // namespace

AdaptionPromptConfig read_adaption_prompt_config(const std::string& path) {
  using nlohmann::json;
  json j = read_json_object_file(path);
  auto field = [&](const char* k) { return json_field(j, k); };
  const json* pt = field("peft_type");
  if (!pt || !pt->is_string() || pt->get<std::string>() != "ADAPTION_PROMPT")
    throw_error(ErrorKind::Format, path, ": peft_type must be ADAPTION_PROMPT, got ",
                pt ? pt->dump() : "none");
  AdaptionPromptConfig c;
  for (auto [k, dst] : {std::pair<const char*, int64_t*>{"adapter_len", &c.adapter_len},
                        std::pair<const char*, int64_t*>{"adapter_layers", &c.adapter_layers}}) {
    const json* v = field(k);
    if (!v) throw_error(ErrorKind::Format, path, ": '", k, "' is missing");
    if (!v->is_number_integer())
      throw_error(ErrorKind::Format, path, ": field '", k, "' must be an integer, got ", v->dump());
    *dst = v->get<int64_t>();
  }
  if (const json* v = field("target_modules")) {
    if (!v->is_string() || v->get<std::string>() != "self_attn")
      throw_error(ErrorKind::Unsupported, path, ": target_modules ", v->dump(),
                  " is not supported (Llama-family models adapt \"self_attn\")");
  }
  if (const json* v = field("base_model_name_or_path"))
    if (v->is_string()) c.base_model_name_or_path = v->get<std::string>();
  if (const json* v = field("task_type")) {
    if (v->is_string()) c.task_type = v->get<std::string>();
    if (c.task_type != "CAUSAL_LM")
      throw_error(ErrorKind::Unsupported, path, ": task_type '", c.task_type,
                  "' is not supported (CAUSAL_LM)");
  }
  if (c.adapter_len <= 0 || c.adapter_layers <= 0)
    throw_error(ErrorKind::Format, path, ": adapter_len (", c.adapter_len, ") and adapter_layers (",
                c.adapter_layers, ") must be > 0");
  return c;
}

void write_adaption_prompt_config(const std::string& path, const AdaptionPromptConfig& c) {
  using nlohmann::json;
  json j = json::object();
  j["adapter_layers"] = c.adapter_layers;
  j["adapter_len"] = c.adapter_len;
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] =
      c.base_model_name_or_path.empty() ? json(nullptr) : json(c.base_model_name_or_path);
  j["inference_mode"] = true;
  j["peft_type"] = "ADAPTION_PROMPT";
  j["peft_version"] = "0.21.2";
  j["revision"] = nullptr;
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

static void check_fits(const LlamaModel& model, const AdaptionPromptConfig& c, const std::string& ctx) {
  const ModelConfig& m = model.config();
  if (c.adapter_layers > m.num_hidden_layers)
    throw_error(ErrorKind::Config, ctx, "adapter_layers ", c.adapter_layers, " exceeds the model's ",
                m.num_hidden_layers, " layers");
  if ((int64_t)m.num_attention_heads * m.head_dim != m.hidden_size)
    throw_error(ErrorKind::Unsupported, ctx, "LLaMA-Adapter needs num_attention_heads x head_dim (",
                m.num_attention_heads, " x ", m.head_dim, ") = hidden_size (", m.hidden_size, ")");
}

AdaptionPromptModel AdaptionPromptModel::create(LlamaModel& model, const AdaptionPromptConfig& cfg,
                                                uint64_t seed) {
  check_fits(model, cfg, "ADAPTION_PROMPT config: ");
  if (cfg.adapter_len <= 0) throw_error(ErrorKind::Config, "ADAPTION_PROMPT config: adapter_len must be > 0");
  AdaptionPromptModel ap;
  ap.model_ = &model;
  ap.cfg_ = cfg;
  if (ap.cfg_.base_model_name_or_path.empty()) ap.cfg_.base_model_name_or_path = model.source();
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  const int L = model.config().num_hidden_layers;
  for (int l = L - (int)cfg.adapter_layers; l < L; l++) {
    Layer x;
    x.index = l;
    x.prompt = Tensor::empty({1, cfg.adapter_len, (int64_t)model.config().hidden_size}, DType::F32);
    for (int64_t i = 0; i < x.prompt.numel(); i++) x.prompt.data<float>()[i] = (float)nd(rng);
    x.gate = Tensor::zeros({1}, DType::F32);
    ap.layers_.push_back(x);
  }
  ap.refresh();
  return ap;
}

AdaptionPromptModel AdaptionPromptModel::load(LlamaModel& model, const std::string& dir) {
  const std::string cfg_path = path_join(dir, "adapter_config.json");
  const std::string st_path = path_join(dir, "adapter_model.safetensors");
  if (!path_is_dir(dir)) throw_error(ErrorKind::Io, "adapter folder ", dir, " does not exist");
  if (!path_is_file(cfg_path)) throw_error(ErrorKind::Io, "no adapter_config.json in adapter folder ", dir);
  if (!path_is_file(st_path))
    throw_error(ErrorKind::Io, "no adapter_model.safetensors in adapter folder ", dir);
  AdaptionPromptModel ap;
  ap.model_ = &model;
  ap.cfg_ = read_adaption_prompt_config(cfg_path);
  check_fits(model, ap.cfg_, cfg_path + ": ");
  auto file = SafetensorsFile::open(st_path);
  std::set<std::string> used;
  const int L = model.config().num_hidden_layers;
  const int64_t C = model.config().hidden_size;
  auto fetch = [&](const std::string& k, const Shape& want) {
    if (!file->has(k))
      throw_error(ErrorKind::Format, st_path, ": missing tensor '", k, "' (adapter_layers ",
                  ap.cfg_.adapter_layers, " of ", L, " layers in adapter_config.json)");
    Tensor t = file->get(k);
    if (t.shape() != want)
      throw_error(ErrorKind::Format, st_path, ": tensor '", k, "' has shape ", shape_str(t.shape()),
                  ", expected ", shape_str(want), " (adapter_len ", ap.cfg_.adapter_len,
                  " from adapter_config.json, hidden size ", C, " of the model)");
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
      throw_error(ErrorKind::Format, st_path, ": tensor '", k, "' has dtype ", dtype_name(t.dtype()));
    used.insert(k);
    return t.to_dtype(DType::F32).clone();
  };
  for (int l = L - (int)ap.cfg_.adapter_layers; l < L; l++) {
    Layer x;
    x.index = l;
    x.prompt = fetch(key(l, "adaption_prompt"), {1, ap.cfg_.adapter_len, C});
    x.gate = fetch(key(l, "adaption_gate"), {1});
    ap.layers_.push_back(x);
  }
  for (const TensorInfo& ti : file->tensors())
    if (!used.count(ti.name))
      throw_error(ErrorKind::Format, st_path, ": unexpected tensor '", ti.name, "' (adapter_layers ",
                  ap.cfg_.adapter_layers, " in adapter_config.json adapts layers ",
                  L - ap.cfg_.adapter_layers, "..", L - 1, ")");
  ap.refresh();
  return ap;
}

void AdaptionPromptModel::refresh() {
  const ModelConfig& m = model_->config();
  const int64_t Lp = cfg_.adapter_len, Hkv = m.num_key_value_heads, D = m.head_dim, C = m.hidden_size;
  const DType act = model_->activation_dtype();
  const Device dev = model_->device();
  for (const Layer& x : layers_) {
    LlamaLayer& L = model_->mutable_layers()[x.index];
    Tensor a = x.prompt.to_dtype(act).to(dev).reshape({Lp, C});  // [Lp, C]
    Tensor k = Tensor::empty({Lp, Hkv * D}, act, dev), v = Tensor::empty({Lp, Hkv * D}, act, dev);
    L.k.forward(k, a);
    L.v.forward(v, a);
    // g·V, on the host in f32 (rounded once to the activation dtype).
    Tensor vh = v.to(Device::CPU).to_dtype(DType::F32).clone();
    const float g = x.gate.data<float>()[0];
    for (int64_t i = 0; i < vh.numel(); i++) vh.data<float>()[i] *= g;
    Tensor vg = vh.to_dtype(act).to(dev);
    L.attn_adapter =
        std::make_shared<GatedPromptAttention>(k.reshape({1, Lp, Hkv, D}), vg.reshape({1, Lp, Hkv, D}));
  }
}

void AdaptionPromptModel::detach() {
  for (const Layer& x : layers_) model_->mutable_layers()[x.index].attn_adapter.reset();
}

void AdaptionPromptModel::save(const std::string& dir) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw_error(ErrorKind::Io, "cannot create adapter folder ", dir, ": ", ec.message());
  std::vector<std::pair<std::string, Tensor>> t;
  for (const Layer& x : layers_) {
    t.emplace_back(key(x.index, "adaption_gate"), x.gate);
    t.emplace_back(key(x.index, "adaption_prompt"), x.prompt);
  }
  write_safetensors(path_join(dir, "adapter_model.safetensors"), t, {{"format", "pt"}});
  write_adaption_prompt_config(path_join(dir, "adapter_config.json"), cfg_);
}

}  // namespace qtune
