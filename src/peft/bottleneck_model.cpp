// BottleneckLayer forward and BottleneckModel: targets, init, folder I/O (see bottleneck_model.h).
#include "peft/bottleneck_model.h"

#include <cmath>
#include <random>
#include <sstream>

#include "core/error.h"
#include "io/json_util.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"

namespace qtune {

namespace {

const char* kPrefix = "base_model.model.";

uint64_t mix_seed(uint64_t seed, uint64_t i) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Tensor on_device(const Tensor& master, const Tensor& current, Device device) {
  if (device == Device::CPU) return master;
  if (current.defined() && current.device() == device && current.numel() == master.numel()) {
    Tensor c = current;
    c.copy_from(master);
    return c;
  }
  return master.to(device);
}

}  // namespace

void BottleneckLayer::refresh(Device device) {
  QT_CHECK(down_w.defined() && up_w.defined() && down_w.dtype() == DType::F32);
  down_w_d = on_device(down_w, down_w_d, device);
  down_b_d = on_device(down_b, down_b_d, device);
  up_w_d = on_device(up_w, up_w_d, device);
  up_b_d = on_device(up_b, up_b_d, device);
}

void BottleneckLayer::inner(const Tensor& h32, Tensor& z, Tensor& a) const {
  const int64_t N = h32.numel() / C;
  z = Tensor::empty({N, r}, DType::F32, h32.device());
  linear_forward(z, h32, down_w_d, &down_b_d);  // z = h·downᵀ + b_down  [N, r]
  a = Tensor::empty({N, r}, DType::F32, h32.device());
  adapter_act_forward(a, z, act);
}

void BottleneckLayer::apply(Tensor& out, const Tensor& x) const {
  QT_CHECK(down_w_d.defined(), "bottleneck adapter ", module, " used before refresh()");
  const int64_t N = out.numel() / C;
  Tensor h32 = out.reshape({N, C});
  if (out.dtype() != DType::F32) {
    h32 = Tensor::empty({N, C}, DType::F32, out.device());
    convert(h32, out.reshape({N, C}));
  }
  Tensor z, a;
  inner(h32, z, a);
  Tensor u = Tensor::empty({N, C}, DType::F32, out.device());  // up(a) [N, C]
  linear_forward(u, a, up_w_d, &up_b_d);
  Tensor o2 = out.reshape({N, C});
  add_inplace(o2, u);
}

Linear* BottleneckModel::find_linear(const std::string& module) const {
  for (auto& [n, lin] : linear_modules(*model_))
    if (n == module) return lin;
  throw_error(ErrorKind::Internal, "bottleneck module ", module, " is not in the model");
}

namespace {

std::vector<std::string> resolve(LlamaModel& model, const BottleneckConfig& cfg, const std::string& context) {
  LoraConfig t;
  t.target_modules = cfg.target_modules;
  std::vector<std::string> names;
  for (auto& [n, lin] : linear_modules(model)) names.push_back(n);
  return resolve_lora_targets(t, names, context);
}

}  // namespace

BottleneckModel BottleneckModel::create(LlamaModel& model, BottleneckConfig cfg, uint64_t seed) {
  cfg.apply_defaults("bottleneck config: ");
  cfg.hidden_size = model.config().hidden_size;
  BottleneckModel m;
  m.model_ = &model;
  m.cfg_ = cfg;
  m.targets_ = resolve(model, cfg, "bottleneck config: ");
  for (size_t i = 0; i < m.targets_.size(); ++i) {
    Linear* lin = m.find_linear(m.targets_[i]);
    auto l = std::make_shared<BottleneckLayer>();
    l->module = m.targets_[i];
    l->r = cfg.bottleneck_size;
    l->C = lin->out_features();
    l->act = cfg.non_linearity;
    l->down_w = Tensor::empty({l->r, l->C}, DType::F32);
    std::mt19937_64 rng(mix_seed(seed, i));
    std::uniform_real_distribution<double> ud(-1.0 / std::sqrt((double)l->C), 1.0 / std::sqrt((double)l->C));
    float* d = l->down_w.data<float>();
    for (int64_t k = 0; k < l->down_w.numel(); ++k) d[k] = (float)ud(rng);
    l->down_b = Tensor::zeros({l->r}, DType::F32);
    l->up_w = Tensor::zeros({l->C, l->r}, DType::F32);
    l->up_b = Tensor::zeros({l->C}, DType::F32);
    m.layers_.push_back(l);
  }
  m.refresh();
  return m;
}

BottleneckModel BottleneckModel::load(LlamaModel& model, const std::string& dir) {
  const AdapterFiles f = adapter_files(dir);
  BottleneckModel m;
  m.model_ = &model;
  m.cfg_ = read_bottleneck_config(f.config);
  const int64_t hidden = model.config().hidden_size;
  if (m.cfg_.hidden_size != 0 && m.cfg_.hidden_size != hidden)
    throw_error(ErrorKind::Format, f.config, ": the adapter was made for a base with hidden size ",
                m.cfg_.hidden_size, ", this model has hidden size ", hidden);
  m.targets_ = resolve(model, m.cfg_, f.config + ": ");
  AdapterTensorReader reader(f.safetensors, hidden);
  for (const std::string& t : m.targets_) {
    Linear* lin = m.find_linear(t);
    auto l = std::make_shared<BottleneckLayer>();
    l->module = t;
    l->r = m.cfg_.bottleneck_size;
    l->C = lin->out_features();
    l->act = m.cfg_.non_linearity;
    std::ostringstream why;
    why << "bottleneck_size=" << l->r << " from adapter_config.json, " << t << " outputs " << l->C;
    l->down_w = reader.fetch(t + ".adapter_down.weight", {l->r, l->C}, why.str());
    l->down_b = reader.fetch(t + ".adapter_down.bias", {l->r}, why.str());
    l->up_w = reader.fetch(t + ".adapter_up.weight", {l->C, l->r}, why.str());
    l->up_b = reader.fetch(t + ".adapter_up.bias", {l->C}, why.str());
    m.layers_.push_back(l);
  }
  reader.reject_unused();
  m.refresh();
  return m;
}

void BottleneckModel::refresh() {
  for (const auto& l : layers_) l->refresh(model_->device());
  attach();
}

void BottleneckModel::attach() {
  for (const auto& l : layers_) {
    if (!l->down_w_d.defined()) l->refresh(model_->device());
    find_linear(l->module)->adapter = l;
  }
}

void BottleneckModel::detach() {
  for (const auto& l : layers_) {
    Linear* lin = find_linear(l->module);
    if (lin->adapter == l) lin->adapter.reset();
  }
}

std::vector<NamedTensor> BottleneckModel::trainable() const {
  std::vector<NamedTensor> out;
  for (const auto& l : layers_) {
    const std::string p = kPrefix + l->module;
    out.push_back({p + ".adapter_down.weight", l->down_w});
    out.push_back({p + ".adapter_down.bias", l->down_b});
    out.push_back({p + ".adapter_up.weight", l->up_w});
    out.push_back({p + ".adapter_up.bias", l->up_b});
  }
  return out;
}

void BottleneckModel::save(const std::string& dir) const {
  std::vector<std::pair<std::string, Tensor>> t;
  for (const NamedTensor& n : trainable()) t.emplace_back(n.name, n.tensor);
  write_adapter_tensors(dir, t);
  BottleneckConfig c = cfg_;
  if (c.base_model_name_or_path.empty()) c.base_model_name_or_path = model_->source();
  write_bottleneck_config(path_join(dir, "adapter_config.json"), c);
}

}  // namespace qtune
