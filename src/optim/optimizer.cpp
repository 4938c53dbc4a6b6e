// Optimizer: state creation (f32 or 8-bit blockwise, as bitsandbytes decides by tensor size; pinned host
// memory when paged), the per-parameter dispatch to the CPU or CUDA kernels (paged: through PagedStates),
// and checkpoint save/load.
#include "optim/optimizer.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_util.h"
#include "io/safetensors.h"
#include "optim/cpu/optim_kernels.h"
#include "quant/codebook.h"
#ifdef QTUNE_HAVE_CUDA
#include "optim/cuda/optim_cuda.h"
#include "optim/cuda/paged_states.h"
#endif

namespace qtune {

namespace {

// The 65536-entry table of Quant8Lut (quant/blockwise8.h) for the device kernels: bin i stands for
// -1 + 2i/65535 and holds the number of code midpoints below it.
std::vector<uint8_t> lut_table(const std::vector<float>& code) {
  std::vector<uint8_t> lut(65536);
  float mids[255];
  for (int j = 0; j < 255; j++) mids[j] = 0.5f * (code[j] + code[j + 1]);
  int idx = 0;
  for (int i = 0; i < 65536; i++) {
    const float val = -1.0f + (2.0f * (float)i) / 65535.0f;
    while (idx < 255 && mids[idx] < val) idx++;
    lut[i] = (uint8_t)idx;
  }
  return lut;
}

// What a parameter of n values keeps: 8-bit codes from min_8bit_size values on (8-bit kinds, as
// bitsandbytes decides), and two states except for Lion.
struct StateKind {
  bool quantized, two_states;
};

StateKind state_kind(const OptimizerConfig& cfg, int64_t n) {
  return {cfg.kind != OptimizerKind::AdamW && n >= cfg.min_8bit_size, cfg.kind != OptimizerKind::Lion8bit};
}

#ifdef QTUNE_HAVE_CUDA
// Where a parameter's paged states lie: its region of a pinned state arena (region_bytes 0: none).
struct ArenaPlace {
  int64_t region_bytes = 0;
  const void* arena = nullptr;
};

// Zero paged states for the flattened params `which` (CUDA params, in parameter order) in one pinned
// arena: into[i] and place[i] for each i in which.
void make_paged_states(const OptimizerConfig& cfg, const std::vector<ParamGroup>& groups,
                       const std::vector<size_t>& which, std::vector<ParamState>& into,
                       std::vector<ArenaPlace>& place) {
  std::vector<const ParamRef*> flat;
  for (const ParamGroup& g : groups)
    for (const ParamRef& p : g.params) flat.push_back(&p);
  std::vector<PagedStateSpec> specs;
  for (size_t i : which) {
    const StateKind sk = state_kind(cfg, flat[i]->param.numel());
    specs.push_back({flat[i]->param.shape(), sk.quantized, sk.two_states, cfg.blocksize});
  }
  std::vector<PagedHostStates> host = pinned_state_arena(specs);
  for (size_t k = 0; k < which.size(); ++k) {
    ParamState& s = into[which[k]];
    s = ParamState();
    s.quantized = specs[k].quantized;
    s.state1 = host[k].state[0];
    s.state2 = host[k].state[1];
    s.absmax1 = host[k].absmax[0];
    s.absmax2 = host[k].absmax[1];
    place[which[k]] = {host[k].region_bytes, host[k].arena};
  }
}
#endif

}  // namespace

struct Optimizer::Maps {
  Quant8Lut signed_map{create_dynamic_map(true)};     // first moment
  Quant8Lut unsigned_map{create_dynamic_map(false)};  // second moment
  Tensor dev_code[2], dev_lut[2];                     // CUDA copies, made at the first CUDA 8-bit step
  void to_device() {
    if (dev_code[0].defined()) return;
    for (int k = 0; k < 2; ++k) {
      const std::vector<float>& code = (k == 0 ? signed_map : unsigned_map).code();
      std::vector<uint8_t> lut = lut_table(code);
      dev_code[k] = Tensor::from_f32(code, {256}).to(Device::CUDA);
      Tensor host_lut = Tensor::empty({65536}, DType::U8);
      std::copy(lut.begin(), lut.end(), host_lut.data<uint8_t>());
      dev_lut[k] = host_lut.to(Device::CUDA);
    }
  }
#ifdef QTUNE_HAVE_CUDA
  DeviceQuantMap device(int k) {
    to_device();
    return {dev_code[k].data<float>(), dev_lut[k].data<uint8_t>()};
  }
#endif
};

struct Optimizer::Paged {
#ifdef QTUNE_HAVE_CUDA
  explicit Paged(int64_t slot_bytes) : states(slot_bytes) {}
  PagedStates states;
  std::vector<ArenaPlace> place;  // per flattened param
#endif
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

OptimizerConfig optimizer_config_from_name(const std::string& name) {
  const bool paged = name.rfind("paged_", 0) == 0;
  const std::string n = paged ? name.substr(6) : name;
  OptimizerKind kind;
  if (n == "adamw_torch" || n == "adamw_torch_fused" || n == "adamw_32bit" || n == "adamw")
    kind = OptimizerKind::AdamW;
  else if (n == "adamw_8bit" || n == "adamw_bnb_8bit")
    kind = OptimizerKind::AdamW8bit;
  else if (n == "lion_8bit")
    kind = OptimizerKind::Lion8bit;
  else
    throw_error(ErrorKind::Usage, "unknown optimizer '", name,
                "' (known: adamw_torch, adamw_torch_fused, adamw_8bit, adamw_bnb_8bit, lion_8bit, "
                "paged_adamw_32bit, paged_adamw_8bit, paged_lion_8bit)");
  OptimizerConfig c = OptimizerConfig::defaults(kind);
  c.paged = paged;
  return c;
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
#ifdef QTUNE_HAVE_CUDA
      const bool device_ok = true;
#else
      const bool device_ok = !p.param.is_cuda();
#endif
      if (!p.param.defined() || p.param.dtype() != DType::F32 || !device_ok)
        throw_error(ErrorKind::Unsupported, "optimizer: parameter '", p.name, "' must be an F32 tensor",
                    device_ok ? "" : " on the CPU (built without CUDA)", ", got ",
                    p.param.defined() ? p.param.describe() : "undefined");
      for (const std::string& n : names_)
        if (n == p.name) throw_error(ErrorKind::Usage, "optimizer: parameter '", p.name, "' appears twice");
      names_.push_back(p.name);
    }
  }
  states_.resize(names_.size());
#ifdef QTUNE_HAVE_CUDA
  if (cfg_.paged) {
    paged_ = std::make_unique<Paged>(cfg_.paged_slot_bytes);
    paged_->place.assign(names_.size(), ArenaPlace());
  }
#endif
}

Optimizer::~Optimizer() = default;
Optimizer::Optimizer(Optimizer&&) noexcept = default;
Optimizer& Optimizer::operator=(Optimizer&&) noexcept = default;

ParamState Optimizer::make_state(const ParamRef& p) const {
  ParamState s;
  const int64_t n = p.param.numel();
  const Shape& shape = p.param.shape();
  const Device dev = p.param.device();
#ifdef QTUNE_HAVE_CUDA
  const bool pinned = paged_ && dev == Device::CUDA;
#else
  const bool pinned = false;
#endif
  // Zero states beside the param, or in pinned host memory when paged.
  auto zeros = [&](const Shape& sh, DType dt) {
#ifdef QTUNE_HAVE_CUDA
    if (pinned) return pinned_host_zeros(sh, dt);
#endif
    return Tensor::zeros(sh, dt, dev);
  };
  (void)pinned;
  s.step = 0;
  const StateKind sk = state_kind(cfg_, n);
  s.quantized = sk.quantized;
  const bool two_states = sk.two_states;
  if (!s.quantized) {
    s.state1 = zeros(shape, DType::F32);
    if (two_states) s.state2 = zeros(shape, DType::F32);
    return s;
  }
  const int64_t blocks = (n + cfg_.blocksize - 1) / cfg_.blocksize;
  s.state1 = zeros(shape, DType::U8);
  s.absmax1 = zeros({blocks}, DType::F32);
  if (two_states) {
    s.state2 = zeros(shape, DType::U8);
    s.absmax2 = zeros({blocks}, DType::F32);
  }
  return s;
}

void Optimizer::step(double lr) {
  // Check every grad first; paged CUDA params stepped for the first time get their states together, in
  // one pinned arena in parameter order.
  std::vector<size_t> fresh;
  size_t index = 0;
  for (const ParamGroup& g : groups_) {
    for (const ParamRef& p : g.params) {
      const size_t i = index++;
      if (!p.grad.defined()) continue;
      if (p.grad.dtype() != DType::F32 || p.grad.device() != p.param.device() ||
          p.grad.numel() != p.param.numel())
        throw_error(ErrorKind::Shape, "optimizer: gradient of '", p.name, "' is ", p.grad.describe(),
                    ", expected F32 ", shape_str(p.param.shape()), " on the parameter's device (",
                    device_name(p.param.device()), ")");
      if (paged_ && p.param.is_cuda() && !states_[i].state1.defined()) fresh.push_back(i);
    }
  }
#ifdef QTUNE_HAVE_CUDA
  if (!fresh.empty()) make_paged_states(cfg_, groups_, fresh, states_, paged_->place);
  std::vector<PagedJob> jobs;    // paged CUDA params, streamed after the loop
  std::vector<Bnb8Tensor> bnb8;  // unpaged CUDA 8-bit params, updated together after the loop
#endif
  index = 0;
  for (const ParamGroup& g : groups_) {
    for (const ParamRef& p : g.params) {
      const size_t i = index++;
      if (!p.grad.defined()) continue;
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
#ifdef QTUNE_HAVE_CUDA
      if (p.param.is_cuda() && paged_) {
        PagedJob j;
        j.p = w;
        j.g = gr;
        j.n = n;
        j.quantized = s.quantized;
        j.blocksize = cfg_.blocksize;
        j.state[0] = s.state1;
        j.state[1] = s.state2;
        j.absmax[0] = s.absmax1;
        j.absmax[1] = s.absmax2;
        j.region_bytes = paged_->place[i].region_bytes;
        j.arena = paged_->place[i].arena;
        j.h = h;
        jobs.push_back(std::move(j));
        continue;
      }
      if (p.param.is_cuda() && s.quantized) {
        bnb8.push_back({w, gr, s.state1.data<uint8_t>(), s.absmax1.data<float>(), s.state2.data<uint8_t>(),
                        s.absmax2.data<float>(), n, h});
        continue;
      }
      if (p.param.is_cuda()) {
        update_cuda(s.quantized, w, gr, s.state1.raw(), s.state2.raw(), s.absmax1.data<float>(),
                    s.absmax2.data<float>(), n, h);
        continue;
      }
#endif
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
#ifdef QTUNE_HAVE_CUDA
  const bool lion = cfg_.kind == OptimizerKind::Lion8bit;
  if (!bnb8.empty()) bnb8_multi_step_cuda(lion, bnb8, cfg_.blocksize, maps_->device(0), maps_->device(1));
  if (!jobs.empty()) {
    // The same kernels as above, on the staged states of each batch: the 8-bit pieces together.
    paged_->states.step(std::move(jobs), [&](const std::vector<PagedPiece>& batch) {
      bnb8.clear();
      for (const PagedPiece& pc : batch) {
        const PagedJob& j = *pc.job;
        if (j.quantized)
          bnb8.push_back({j.p + pc.off, j.g + pc.off, (uint8_t*)pc.st.state[0], pc.st.absmax[0],
                          (uint8_t*)pc.st.state[1], pc.st.absmax[1], pc.len, j.h});
        else
          update_cuda(false, j.p + pc.off, j.g + pc.off, pc.st.state[0], pc.st.state[1], nullptr, nullptr,
                      pc.len, j.h);
      }
      if (!bnb8.empty()) bnb8_multi_step_cuda(lion, bnb8, cfg_.blocksize, maps_->device(0), maps_->device(1));
    });
  }
#endif
}

void Optimizer::wait_paged() const {
#ifdef QTUNE_HAVE_CUDA
  if (paged_) paged_->states.wait();
#endif
}

void Optimizer::zero_grad() {
  for (ParamGroup& g : groups_)
    for (ParamRef& p : g.params) {
      if (!p.grad.defined()) continue;
      if (p.grad.is_cuda())
        p.grad.copy_from(Tensor::zeros(p.grad.shape(), DType::F32));
      else
        std::fill(p.grad.data<float>(), p.grad.data<float>() + p.grad.numel(), 0.0f);
    }
}

#ifdef QTUNE_HAVE_CUDA
void Optimizer::update_cuda(bool quantized, float* w, const float* gr, void* s1, void* s2, float* a1,
                            float* a2, int64_t n, const AdamHyper& h) {
  if (quantized) {
    const DeviceQuantMap m1 = maps_->device(0), m2 = maps_->device(1);
    const bool lion = cfg_.kind == OptimizerKind::Lion8bit;
    bnb8_step_cuda(lion, w, gr, (uint8_t*)s1, a1, lion ? nullptr : (uint8_t*)s2, lion ? nullptr : a2, n,
                   cfg_.blocksize, m1, m2, h);
    return;
  }
  switch (cfg_.kind) {
    case OptimizerKind::AdamW:
      adamw_step_cuda(w, gr, (float*)s1, (float*)s2, n, h);
      break;
    case OptimizerKind::AdamW8bit:
      bnb_adam32_step_cuda(w, gr, (float*)s1, (float*)s2, n, h);
      break;
    case OptimizerKind::Lion8bit:
      bnb_lion32_step_cuda(w, gr, (float*)s1, n, h);
      break;
  }
}
#endif

bool Optimizer::has_state(const std::string& name) const {
  for (size_t i = 0; i < names_.size(); ++i)
    if (names_[i] == name) return states_[i].state1.defined();
  return false;
}

const ParamState& Optimizer::state(const std::string& name) const {
  wait_paged();
  for (size_t i = 0; i < names_.size(); ++i)
    if (names_[i] == name) {
      if (!states_[i].state1.defined())
        throw_error(ErrorKind::Usage, "optimizer: parameter '", name, "' has no state yet (no step taken)");
      return states_[i];
    }
  throw_error(ErrorKind::Usage, "optimizer: no parameter named '", name, "'");
}

void Optimizer::save(const std::string& path) const {
  wait_paged();
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
  wait_paged();  // the old states are freed below
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
#ifdef QTUNE_HAVE_CUDA
  std::vector<ArenaPlace> place(names_.size());
  if (paged_) {  // paged CUDA params: the expected layout in one pinned arena
    std::vector<size_t> which;
    size_t index = 0;
    for (const ParamGroup& g : groups_)
      for (const ParamRef& p : g.params) {
        const size_t i = index++;
        if (steps.contains(p.name) && p.param.is_cuda()) which.push_back(i);
      }
    if (!which.empty()) make_paged_states(cfg_, groups_, which, loaded, place);
  }
#endif
  size_t index = 0;
  for (const ParamGroup& g : groups_) {
    for (const ParamRef& p : g.params) {
      const size_t i = index++;
      if (!steps.contains(p.name)) continue;  // never stepped when saved
      ParamState& s = loaded[i];
      if (!s.state1.defined()) s = make_state(p);  // the expected layout
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
#ifdef QTUNE_HAVE_CUDA
  if (paged_) paged_->place = std::move(place);
#endif
}

}  // namespace qtune
