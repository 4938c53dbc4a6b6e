// Optimizer: state creation (f32 or 8-bit blockwise, as bitsandbytes decides by tensor size), the
// per-parameter dispatch to the CPU kernels, and checkpoint save/load.
#include "optim/optimizer.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_util.h"
#include "io/safetensors.h"
#include "optim/cpu/optim_kernels.h"
#include "quant/codebook.h"

namespace qtune {

struct Optimizer::Maps {
  Quant8Lut signed_map{create_dynamic_map(true)};     // first moment
  Quant8Lut unsigned_map{create_dynamic_map(false)};  // second moment
};

const char* optimizer_kind_name(OptimizerKind k) {
  switch (k) {
    case OptimizerKind::AdamW:
      return "adamw";
    case OptimizerKind::AdamW8bit:
      return "adamw_8bit";
    case OptimizerKind::Lion8bit:
      return "lion_8bit";
  }
  return "?";
}

OptimizerKind optimizer_kind_from_name(const std::string& name) {
  for (OptimizerKind k : {OptimizerKind::AdamW, OptimizerKind::AdamW8bit, OptimizerKind::Lion8bit})
    if (name == optimizer_kind_name(k)) return k;
  if (name == "adamw_torch") return OptimizerKind::AdamW;
  throw_error(ErrorKind::Usage, "unknown optimizer '", name,
              "' (known: adamw, adamw_torch, adamw_8bit, lion_8bit)");
}

OptimizerConfig OptimizerConfig::defaults(OptimizerKind kind) {
  OptimizerConfig c;
  c.kind = kind;
  if (kind == OptimizerKind::Lion8bit) c.beta2 = 0.99;
  return c;
}

Optimizer::Optimizer(const OptimizerConfig& cfg, std::vector<ParamGroup> groups)
    : cfg_(cfg), groups_(std::move(groups)), maps_(std::make_unique<Maps>()) {
  if (cfg_.kind != OptimizerKind::AdamW) check_blocksize(cfg_.blocksize, "optimizer state blocksize");
  for (const ParamGroup& g : groups_) {
    for (const ParamRef& p : g.params) {
      if (!p.param.defined() || p.param.dtype() != DType::F32 || p.param.is_cuda())
        throw_error(ErrorKind::Unsupported, "optimizer: parameter '", p.name,
                    "' must be an F32 CPU tensor, got ",
                    p.param.defined() ? p.param.describe() : "undefined");
      for (const std::string& n : names_)
        if (n == p.name) throw_error(ErrorKind::Usage, "optimizer: parameter '", p.name, "' appears twice");
      names_.push_back(p.name);
    }
  }
  states_.resize(names_.size());
}

Optimizer::~Optimizer() = default;
Optimizer::Optimizer(Optimizer&&) noexcept = default;
Optimizer& Optimizer::operator=(Optimizer&&) noexcept = default;

ParamState Optimizer::make_state(const ParamRef& p) const {
  ParamState s;
  const int64_t n = p.param.numel();
  const Shape& shape = p.param.shape();
  s.step = 0;
  s.quantized = cfg_.kind != OptimizerKind::AdamW && n >= cfg_.min_8bit_size;
  const bool two_states = cfg_.kind != OptimizerKind::Lion8bit;
  if (!s.quantized) {
    s.state1 = Tensor::zeros(shape, DType::F32);
    if (two_states) s.state2 = Tensor::zeros(shape, DType::F32);
    return s;
  }
  const int64_t blocks = (n + cfg_.blocksize - 1) / cfg_.blocksize;
  s.state1 = Tensor::zeros(shape, DType::U8);
  s.absmax1 = Tensor::zeros({blocks}, DType::F32);
  if (two_states) {
    s.state2 = Tensor::zeros(shape, DType::U8);
    s.absmax2 = Tensor::zeros({blocks}, DType::F32);
  }
  return s;
}

void Optimizer::step(double lr) {
  size_t index = 0;
  for (const ParamGroup& g : groups_) {
    for (const ParamRef& p : g.params) {
      const size_t i = index++;
      if (!p.grad.defined()) continue;
      if (p.grad.dtype() != DType::F32 || p.grad.is_cuda() || p.grad.numel() != p.param.numel())
        throw_error(ErrorKind::Shape, "optimizer: gradient of '", p.name, "' is ", p.grad.describe(),
                    ", expected F32 ", shape_str(p.param.shape()), " on the CPU");
      ParamState& s = states_[i];
      if (!s.state1.defined()) s = make_state(p);
      s.step += 1;
      AdamHyper h;
      h.lr = lr * g.lr_scale;
      h.beta1 = cfg_.beta1;
      h.beta2 = cfg_.beta2;
      h.eps = cfg_.eps;
      h.weight_decay = g.weight_decay;
      h.step = s.step;
      float* w = p.param.data<float>();
      const float* gr = p.grad.data<float>();
      const int64_t n = p.param.numel();
      switch (cfg_.kind) {
        case OptimizerKind::AdamW:
          adamw_step_f32(w, gr, s.state1.data<float>(), s.state2.data<float>(), n, h);
          break;
        case OptimizerKind::AdamW8bit:
          if (s.quantized)
            bnb_adam8_step(w, gr, s.state1.data<uint8_t>(), s.absmax1.data<float>(), s.state2.data<uint8_t>(),
                           s.absmax2.data<float>(), n, cfg_.blocksize, maps_->signed_map, maps_->unsigned_map,
                           h);
          else
            bnb_adam32_step(w, gr, s.state1.data<float>(), s.state2.data<float>(), n, h);
          break;
        case OptimizerKind::Lion8bit:
          if (s.quantized)
            bnb_lion8_step(w, gr, s.state1.data<uint8_t>(), s.absmax1.data<float>(), n, cfg_.blocksize,
                           maps_->signed_map, h);
          else
            bnb_lion32_step(w, gr, s.state1.data<float>(), n, h);
          break;
      }
    }
  }
}

void Optimizer::zero_grad() {
  for (ParamGroup& g : groups_)
    for (ParamRef& p : g.params)
      if (p.grad.defined()) std::fill(p.grad.data<float>(), p.grad.data<float>() + p.grad.numel(), 0.0f);
}

bool Optimizer::has_state(const std::string& name) const {
  for (size_t i = 0; i < names_.size(); ++i)
    if (names_[i] == name) return states_[i].state1.defined();
  return false;
}

const ParamState& Optimizer::state(const std::string& name) const {
  for (size_t i = 0; i < names_.size(); ++i)
    if (names_[i] == name) {
      if (!states_[i].state1.defined())
        throw_error(ErrorKind::Usage, "optimizer: parameter '", name, "' has no state yet (no step taken)");
      return states_[i];
    }
  throw_error(ErrorKind::Usage, "optimizer: no parameter named '", name, "'");
}

void Optimizer::save(const std::string& path) const {
  std::vector<std::pair<std::string, Tensor>> tensors;
  nlohmann::json steps = nlohmann::json::object();
  for (size_t i = 0; i < names_.size(); ++i) {
    const ParamState& s = states_[i];
    if (!s.state1.defined()) continue;
    steps[names_[i]] = s.step;
    tensors.emplace_back(names_[i] + ".state1", s.state1);
    if (s.state2.defined()) tensors.emplace_back(names_[i] + ".state2", s.state2);
    if (s.absmax1.defined()) tensors.emplace_back(names_[i] + ".absmax1", s.absmax1);
    if (s.absmax2.defined()) tensors.emplace_back(names_[i] + ".absmax2", s.absmax2);
  }
  nlohmann::json cfg = {{"beta1", cfg_.beta1},
                        {"beta2", cfg_.beta2},
                        {"eps", cfg_.eps},
                        {"min_8bit_size", cfg_.min_8bit_size},
                        {"blocksize", cfg_.blocksize}};
  write_safetensors(
      path, tensors,
      {{"optimizer", optimizer_kind_name(cfg_.kind)}, {"steps", steps.dump()}, {"config", cfg.dump()}});
}

void Optimizer::load(const std::string& path) {
  auto f = SafetensorsFile::open(path);
  const auto& meta = f->metadata();
  auto kind_it = meta.find("optimizer");
  auto steps_it = meta.find("steps");
  if (kind_it == meta.end() || steps_it == meta.end())
    throw_error(ErrorKind::Format, path,
                ": not a qtune optimizer state (metadata 'optimizer'/'steps' missing)");
  if (kind_it->second != optimizer_kind_name(cfg_.kind))
    throw_error(ErrorKind::Format, path, ": optimizer state is for '", kind_it->second, "', this run uses '",
                optimizer_kind_name(cfg_.kind), "'");
  nlohmann::json steps = parse_json_text(steps_it->second, path + " metadata 'steps'", ErrorKind::Format);
  for (auto it = steps.begin(); it != steps.end(); ++it) {
    bool known = false;
    for (const std::string& n : names_) known = known || n == it.key();
    if (!known) throw_error(ErrorKind::Format, path, ": state for unknown parameter '", it.key(), "'");
  }
  std::vector<ParamState> loaded(names_.size());
  size_t index = 0;
  for (const ParamGroup& g : groups_) {
    for (const ParamRef& p : g.params) {
      const size_t i = index++;
      if (!steps.contains(p.name)) continue;  // never stepped when saved
      ParamState& s = loaded[i];
      s = make_state(p);  // the expected layout
      s.step = steps[p.name].get<int64_t>();
      auto fill = [&](Tensor& dst, const char* suffix) {
        if (!dst.defined()) return;
        const std::string key = p.name + suffix;
        if (!f->has(key)) throw_error(ErrorKind::Format, path, ": missing tensor '", key, "'");
        Tensor src = f->get(key);
        if (src.dtype() != dst.dtype() || src.shape() != dst.shape())
          throw_error(ErrorKind::Format, path, ": tensor '", key, "' is ", src.describe(), ", expected ",
                      dtype_name(dst.dtype()), shape_str(dst.shape()));
        dst.copy_from(src);
      };
      fill(s.state1, ".state1");
      fill(s.state2, ".state2");
      fill(s.absmax1, ".absmax1");
      fill(s.absmax2, ".absmax2");
    }
  }
  states_ = std::move(loaded);
}

}  // namespace qtune
