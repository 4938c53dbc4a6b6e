// LoraModel: target resolution, attaching LoraLayers, trained biases / modules_to_save, and PEFT folder
// I/O (see lora_model.h).
#include "peft/lora_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/json_util.h"
#include "io/safetensors.h"
#include "ops/matmul.h"

namespace qtune {

namespace {

const char* kPrefix = "base_model.model.";

bool suffix_match(const std::string& name, const std::string& t) {
  return name == t || (name.size() > t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0 &&
                       name[name.size() - t.size() - 1] == '.');
}

// PEFT: modules_to_save entry m matches a module name by "(^|.*\.)m($|\..*)".
bool module_to_save_match(const std::string& name, const std::string& m) {
  return std::regex_match(name, std::regex("(^|.*\\.)" + m + "($|\\..*)"));
}

std::string join(const std::vector<std::string>& v, size_t max_items = 1000) {
  std::ostringstream os;
  for (size_t i = 0; i < v.size() && i < max_items; ++i) os << (i ? ", " : "") << v[i];
  if (v.size() > max_items) os << ", ... (" << v.size() << " in all)";
  return os.str();
}

uint64_t mix_seed(uint64_t seed, uint64_t i) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Tensor to_model_form(const Tensor& master, const LlamaModel& m) {
  if (m.device() == Device::CPU) return master;
  return master.to_dtype(m.activation_dtype()).to(m.device());
}

}  // namespace

std::vector<std::pair<std::string, Linear*>> linear_modules(LlamaModel& model) {
  std::vector<std::pair<std::string, Linear*>> out;
  for (LlamaLayer& L : model.mutable_layers())
    for (Linear* lin : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) out.emplace_back(lin->name, lin);
  out.emplace_back("lm_head", &model.mutable_lm_head());
  return out;
}

std::vector<std::string> resolve_lora_targets(const LoraConfig& cfg, const std::vector<std::string>& names,
                                              const std::string& context) {
  std::vector<std::string> out;
  std::regex re;
  if (!cfg.target_regex.empty()) {
    try {
      re = std::regex(cfg.target_regex);
    } catch (const std::regex_error& e) {
      throw_error(ErrorKind::Config, context, "target_modules regex '", cfg.target_regex,
                  "' is invalid: ", e.what());
    }
  }
  for (const std::string& n : names) {
    bool excluded = false;
    for (const std::string& e : cfg.exclude_modules) excluded = excluded || suffix_match(n, e);
    for (const std::string& m : cfg.modules_to_save) excluded = excluded || module_to_save_match(n, m);
    if (excluded) continue;
    bool hit = false;
    if (cfg.all_linear)
      hit = n != "lm_head";  // PEFT leaves the output layer out of "all-linear"
    else if (!cfg.target_regex.empty())
      hit = std::regex_match(n, re);
    else
      for (const std::string& t : cfg.target_modules) hit = hit || suffix_match(n, t);
    if (hit) out.push_back(n);
  }
  if (out.empty()) {
    std::string what = cfg.all_linear              ? std::string("\"all-linear\"")
                       : !cfg.target_regex.empty() ? "'" + cfg.target_regex + "'"
                                                   : "[" + join(cfg.target_modules) + "]";
    throw_error(ErrorKind::Config, context, "target_modules ", what,
                " match none of the model's linear modules: ", join(names));
  }
  return out;
}

LoraModel::~LoraModel() = default;

Linear* LoraModel::find_linear(const std::string& module) const {
  for (auto& [n, lin] : linear_modules(*model_))
    if (n == module) return lin;
  QT_CHECK(false, "no linear module ", module);
  return nullptr;
}

void LoraModel::attach_extras(bool from_file) {
  (void)from_file;
  extras_.clear();
  std::set<std::string> targeted(targets_.begin(), targets_.end());
  if (cfg_.bias != LoraBias::None) {
    for (auto& [n, lin] : linear_modules(*model_)) {
      if (!lin->bias.defined()) continue;
      const bool t = targeted.count(n) > 0;
      if (cfg_.bias == LoraBias::LoraOnly && !t) continue;
      extras_.push_back({n + (t ? ".base_layer.bias" : ".bias"), Tensor(), lin->bias, &lin->bias});
    }
  }
  for (const std::string& m : cfg_.modules_to_save) {
    bool hit = false;
    if (module_to_save_match("lm_head", m)) {
      Linear& head = model_->mutable_lm_head();
      if (head.quantized()) throw_error(ErrorKind::Unsupported, "modules_to_save: lm_head is quantized");
      extras_.push_back({"lm_head.weight", Tensor(), head.weight, &head.weight});
      hit = true;
    }
    if (module_to_save_match("model.embed_tokens", m)) {
      Tensor& e = model_->mutable_embed_tokens();
      extras_.push_back({"model.embed_tokens.weight", Tensor(), e, &e});
      hit = true;
    }
    if (!hit)
      throw_error(ErrorKind::Unsupported, "modules_to_save entry '", m,
                  "' matches no supported module (lm_head, model.embed_tokens)");
  }
  for (Extra& x : extras_) x.master = x.original.to(Device::CPU).to_dtype(DType::F32).clone();
}

LoraModel LoraModel::create(LlamaModel& model, const LoraConfig& cfg, uint64_t seed) {
  cfg.validate("LoRA config: ");
  LoraModel lm;
  lm.model_ = &model;
  lm.cfg_ = cfg;
  std::vector<std::string> names;
  for (auto& [n, lin] : linear_modules(model)) names.push_back(n);
  lm.targets_ = resolve_lora_targets(cfg, names, "LoRA config: ");
  for (size_t i = 0; i < lm.targets_.size(); ++i) {
    Linear* lin = lm.find_linear(lm.targets_[i]);
    auto l = std::make_shared<LoraLayer>();
    l->module = lm.targets_[i];
    l->r = cfg.rank_for(l->module);
    l->alpha = cfg.alpha_for(l->module);
    l->scale = cfg.scale_for(l->module);
    init_lora_weights(*l, lin->in_features(), lin->out_features(), cfg.init_lora_weights, mix_seed(seed, i));
    if (cfg.use_dora) l->magnitude = dora_initial_magnitude(*lin);
    lm.layers_.push_back(l);
  }
  lm.attach_extras(false);
  lm.refresh();
  return lm;
}

LoraModel LoraModel::load(LlamaModel& model, const std::string& dir) {
  const std::string cfg_path = path_join(dir, "adapter_config.json");
  const std::string st_path = path_join(dir, "adapter_model.safetensors");
  if (!path_is_dir(dir)) throw_error(ErrorKind::Io, "adapter folder ", dir, " does not exist");
  if (!path_is_file(cfg_path)) throw_error(ErrorKind::Io, "no adapter_config.json in adapter folder ", dir);
  if (!path_is_file(st_path)) {
    if (path_is_file(path_join(dir, "adapter_model.bin")))
      throw_error(ErrorKind::Unsupported, dir,
                  ": adapter_model.bin (pickle) is not supported; save with safetensors");
    throw_error(ErrorKind::Io, "no adapter_model.safetensors in adapter folder ", dir);
  }
  LoraModel lm;
  lm.model_ = &model;
  lm.cfg_ = read_lora_config(cfg_path);
  std::vector<std::string> names;
  for (auto& [n, lin] : linear_modules(model)) names.push_back(n);
  lm.targets_ = resolve_lora_targets(lm.cfg_, names, cfg_path + ": ");
  auto file = SafetensorsFile::open(st_path);
  std::set<std::string> used;
  const int64_t hidden = model.config().hidden_size;
  auto fetch = [&](const std::string& key, const Shape& want, const std::string& why) {
    const std::string full = kPrefix + key;
    if (!file->has(full))
      throw_error(ErrorKind::Format, st_path, ": missing tensor '", full, "' (", why, ")");
    Tensor t = file->get(full);
    if (t.shape() != want)
      throw_error(ErrorKind::Format, st_path, ": tensor '", full, "' has shape ", shape_str(t.shape()),
                  ", expected ", shape_str(want), " (", why,
                  "); the adapter does not fit this base model (hidden size ", hidden,
                  ") or adapter_config.json");
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
      throw_error(ErrorKind::Format, st_path, ": tensor '", full, "' has dtype ", dtype_name(t.dtype()),
                  ", expected F32, BF16 or F16");
    used.insert(full);
    return t.to_dtype(DType::F32).clone();
  };
  for (const std::string& name : lm.targets_) {
    Linear* lin = lm.find_linear(name);
    auto l = std::make_shared<LoraLayer>();
    l->module = name;
    l->r = lm.cfg_.rank_for(name);
    l->alpha = lm.cfg_.alpha_for(name);
    l->scale = lm.cfg_.scale_for(name);
    const int64_t I = lin->in_features(), O = lin->out_features();
    std::ostringstream why;
    why << "r=" << l->r << " from adapter_config.json, " << name << " is [" << O << ", " << I << "]";
    l->A = fetch(name + ".lora_A.weight", {l->r, I}, why.str());
    l->B = fetch(name + ".lora_B.weight", {O, l->r}, why.str());
    if (lm.cfg_.use_dora) l->magnitude = fetch(name + ".lora_magnitude_vector", {O}, why.str());
    lm.layers_.push_back(l);
  }
  lm.attach_extras(true);
  for (Extra& x : lm.extras_)
    x.master = fetch(x.key, x.original.shape(), "bias / modules_to_save of adapter_config.json");
  std::vector<std::string> extra_keys;
  for (const TensorInfo& ti : file->tensors())
    if (!used.count(ti.name)) extra_keys.push_back(ti.name);
  if (!extra_keys.empty())
    throw_error(ErrorKind::Format, st_path,
                ": tensors that match nothing in adapter_config.json and this model: ", join(extra_keys, 5));
  lm.refresh();
  return lm;
}

void LoraModel::refresh() {
  for (const auto& l : layers_) {
    Linear* lin = find_linear(l->module);
    l->refresh(*lin, model_->device(), model_->activation_dtype());
    lin->adapter = l;
  }
  for (Extra& x : extras_) *x.slot = to_model_form(x.master, *model_);
  // DoRA's row scale reads the base bias and weight: refresh layers again once biases are in place.
  if (cfg_.use_dora && !extras_.empty())
    for (const auto& l : layers_)
      l->refresh(*find_linear(l->module), model_->device(), model_->activation_dtype());
}

void LoraModel::detach() {
  for (const auto& l : layers_) find_linear(l->module)->adapter.reset();
  for (Extra& x : extras_) *x.slot = x.original;
}

void LoraModel::merge() {
  for (const auto& l : layers_) {
    Linear* lin = find_linear(l->module);
    if (lin->quantized() || !lin->weight.defined() || lin->weight.is_cuda())
      throw_error(ErrorKind::Unsupported, "merge: ", l->module,
                  " is not a dense CPU weight (merging into quantized or CUDA weights is not supported)");
  }
  for (const auto& l : layers_) {
    Linear* lin = find_linear(l->module);
    Tensor w = lin->weight.to_dtype(DType::F32).clone();         // [O, I], owned (the original may be mmap'd)
    matmul(w, l->B, l->A, false, false, (float)l->scale, 1.0f);  // W += scale·B[O, r]·A[r, I]
    if (l->magnitude.defined()) {
      const int64_t O = w.size(0), I = w.size(1);
      float* wp = w.data<float>();
      for (int64_t o = 0; o < O; ++o) {
        double sq = 0;
        for (int64_t i = 0; i < I; ++i) sq += (double)wp[o * I + i] * wp[o * I + i];
        const float f = (float)(l->magnitude.data<float>()[o] / std::sqrt(sq));
        for (int64_t i = 0; i < I; ++i) wp[o * I + i] *= f;
      }
    }
    lin->weight = w;
    lin->adapter.reset();
  }
  layers_.clear();
}

std::vector<LoraModel::ExtraRef> LoraModel::extras() const {
  std::vector<ExtraRef> out;
  for (const Extra& x : extras_) {
    std::string name = x.key;  // "<module>.base_layer.bias" (a targeted module's bias) -> "<module>.bias"
    const std::string tb = ".base_layer.bias";
    if (name.size() > tb.size() && name.compare(name.size() - tb.size(), tb.size(), tb) == 0)
      name = name.substr(0, name.size() - tb.size()) + ".bias";
    out.push_back({name, x.master, x.slot});
  }
  return out;
}

std::vector<NamedTensor> LoraModel::trainable() const {
  std::vector<NamedTensor> out;
  for (const auto& l : layers_) {
    out.push_back({kPrefix + l->module + ".lora_A.weight", l->A});
    out.push_back({kPrefix + l->module + ".lora_B.weight", l->B});
    if (l->magnitude.defined()) out.push_back({kPrefix + l->module + ".lora_magnitude_vector", l->magnitude});
  }
  for (const Extra& x : extras_) out.push_back({kPrefix + x.key, x.master});
  return out;
}

void LoraModel::save(const std::string& dir) const {
  std::vector<NamedTensor> t = trainable();
  if (t.empty()) throw_error(ErrorKind::Usage, "refusing to write adapter ", dir, ": it has no tensors");
  std::sort(t.begin(), t.end(), [](const NamedTensor& a, const NamedTensor& b) { return a.name < b.name; });
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw_error(ErrorKind::Io, "cannot create adapter folder ", dir, ": ", ec.message());
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const NamedTensor& n : t) tensors.emplace_back(n.name, n.tensor);
  write_safetensors(path_join(dir, "adapter_model.safetensors"), tensors, {{"format", "pt"}});
  LoraConfig c = cfg_;
  if (c.base_model_name_or_path.empty()) c.base_model_name_or_path = model_->source();
  write_lora_config(path_join(dir, "adapter_config.json"), c, c.all_linear ? targets_ : c.target_modules);
}

}  // namespace qtune
