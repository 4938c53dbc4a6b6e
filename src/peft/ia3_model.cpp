// Ia3Layer forward and Ia3Model: targets, PEFT folder I/O, merge / unmerge (see ia3_model.h).
#include "peft/ia3_model.h"

#include <sstream>

#include "core/error.h"
#include "io/json_util.h"
#include "peft/adapter_ops.h"

namespace qtune {

namespace {

const char* kPrefix = "base_model.model.";

std::vector<std::string> linear_names(LlamaModel& model) {
  std::vector<std::string> names;
  for (auto& [n, lin] : linear_modules(model)) names.push_back(n);
  return names;
}

}  // namespace

void Ia3Layer::refresh(Device device) {
  QT_CHECK(l.defined() && l.dtype() == DType::F32 && l.device() == Device::CPU);
  if (device == Device::CPU)
    l_dev = l;
  else if (l_dev.defined() && l_dev.device() == device && l_dev.numel() == l.numel())
    l_dev.copy_from(l);
  else
    l_dev = l.to(device);
}

void Ia3Layer::apply(Tensor& out, const Tensor& x) const {
  if (feedforward) return;
  QT_CHECK(l_dev.defined(), "IA3 layer ", module, " used before refresh()");
  scale_columns(out, out, l_dev);  // [N, O] ⊙ l[O]
}

Tensor Ia3Layer::transform_input(const Tensor& x) const {
  QT_CHECK(l_dev.defined(), "IA3 layer ", module, " used before refresh()");
  Tensor xt = Tensor::empty(x.shape(), x.dtype(), x.device());
  scale_columns(xt, x, l_dev);  // [N, I] ⊙ l[I]
  return xt;
}

Linear* Ia3Model::find_linear(const std::string& module) const {
  for (auto& [n, lin] : linear_modules(*model_))
    if (n == module) return lin;
  throw_error(ErrorKind::Internal, "IA3 module ", module, " is not in the model");
}

Ia3Model Ia3Model::create(LlamaModel& model, Ia3Config cfg) {
  cfg.apply_defaults(model.config().model_type, "IA3 config: ");
  Ia3Model m;
  m.model_ = &model;
  m.cfg_ = cfg;
  m.targets_ = resolve_lora_targets(cfg.targeting(), linear_names(model), "IA3 config: ");
  for (const std::string& t : m.targets_) {
    Linear* lin = m.find_linear(t);
    auto l = std::make_shared<Ia3Layer>();
    l->module = t;
    l->feedforward = cfg.is_feedforward(t);
    const Shape shape = l->feedforward ? Shape{1, lin->in_features()} : Shape{lin->out_features(), 1};
    l->l = Tensor::empty(shape, DType::F32);
    float* p = l->l.data<float>();
    for (int64_t i = 0; i < l->l.numel(); ++i) p[i] = 1.0f;
    m.layers_.push_back(l);
  }
  m.refresh();
  return m;
}

Ia3Model Ia3Model::load(LlamaModel& model, const std::string& dir) {
  const AdapterFiles f = adapter_files(dir);
  Ia3Model m;
  m.model_ = &model;
  m.cfg_ = read_ia3_config(f.config);
  m.cfg_.apply_defaults(model.config().model_type, f.config + ": ");
  m.targets_ = resolve_lora_targets(m.cfg_.targeting(), linear_names(model), f.config + ": ");
  AdapterTensorReader reader(f.safetensors, model.config().hidden_size);
  for (const std::string& t : m.targets_) {
    Linear* lin = m.find_linear(t);
    auto l = std::make_shared<Ia3Layer>();
    l->module = t;
    l->feedforward = m.cfg_.is_feedforward(t);
    const int64_t I = lin->in_features(), O = lin->out_features();
    std::ostringstream why;
    why << t << " is [" << O << ", " << I << "], "
        << (l->feedforward ? "feed-forward: one scale per input" : "one scale per output");
    l->l = reader.fetch(t + ".ia3_l", l->feedforward ? Shape{1, I} : Shape{O, 1}, why.str());
    m.layers_.push_back(l);
  }
  reader.reject_unused();
  m.refresh();
  return m;
}

void Ia3Model::refresh() {
  for (const auto& l : layers_) l->refresh(model_->device());
  attach();
}

void Ia3Model::attach() {
  if (merged_) return;
  for (const auto& l : layers_) {
    if (!l->l_dev.defined()) l->refresh(model_->device());
    find_linear(l->module)->adapter = l;
  }
}

void Ia3Model::detach() {
  if (merged_) unmerge();
  for (const auto& l : layers_) {
    Linear* lin = find_linear(l->module);
    if (lin->adapter == l) lin->adapter.reset();
  }
}

void Ia3Model::scale_weights(bool divide) {
  for (const auto& l : layers_) {
    Linear* lin = find_linear(l->module);
    Tensor w = dense_weight_copy(*lin, divide ? "unmerge IA3" : "merge IA3");  // [O, I]
    const int64_t O = w.size(0), I = w.size(1);
    const float* s = l->l.data<float>();
    auto f = [&](int64_t k) { return divide ? 1.0f / (s[k] + 1e-8f) : s[k]; };
    float* wp = w.data<float>();
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) wp[o * I + i] *= f(l->feedforward ? i : o);
    lin->weight = like_model_tensor(w, lin->weight);
    if (!l->feedforward && lin->bias.defined()) {
      Tensor b = lin->bias.to(Device::CPU).to_dtype(DType::F32).clone();  // [O]
      for (int64_t o = 0; o < O; ++o) b.data<float>()[o] *= f(o);
      lin->bias = like_model_tensor(b, lin->bias);
    }
  }
}

void Ia3Model::merge() {
  if (merged_) return;
  for (const auto& l : layers_) require_dense_weight(*find_linear(l->module), "merge IA3");  // all or none
  for (const auto& l : layers_) {
    Linear* lin = find_linear(l->module);
    if (lin->adapter == l) lin->adapter.reset();
  }
  scale_weights(false);
  merged_ = true;
}

void Ia3Model::unmerge() {
  if (!merged_) return;
  scale_weights(true);
  merged_ = false;
  attach();
}

std::vector<NamedTensor> Ia3Model::trainable() const {
  std::vector<NamedTensor> out;
  for (const auto& l : layers_) out.push_back({kPrefix + l->module + ".ia3_l", l->l});
  return out;
}

void Ia3Model::save(const std::string& dir) const {
  std::vector<std::pair<std::string, Tensor>> t;
  for (const NamedTensor& n : trainable()) t.emplace_back(n.name, n.tensor);
  write_adapter_tensors(dir, t);
  Ia3Config c = cfg_;
  if (c.base_model_name_or_path.empty()) c.base_model_name_or_path = model_->source();
  write_ia3_config(path_join(dir, "adapter_config.json"), c, targets_);
}

}  // namespace qtune
