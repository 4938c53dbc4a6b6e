// Optimizers over (param, grad) tensor pairs: AdamW with f32 states (torch.optim.AdamW), and 8-bit AdamW /
// 8-bit Lion with blockwise-quantized states exactly as bitsandbytes (AdamW8bit, Lion8bit) defines them.
//
//   std::vector<ParamGroup> groups = group_by_weight_decay(params, 0.01);   // param_groups.h
//   Optimizer opt(OptimizerConfig{OptimizerKind::AdamW8bit}, groups);
//   ... fill each ParamRef::grad ...
//   opt.step(schedule.lr(step));            // lr from schedule.h
//   opt.save("optimizer.safetensors");      // and Optimizer::load on resume
//
// State storage: each parameter owns one ParamState whose buffers are plain Tensors (F32 states, or U8
// codes + F32 absmax per 256-block for the 8-bit kinds), beside the parameter. Paged optimizers
// (config.paged, the names paged_adamw_32bit / paged_adamw_8bit / paged_lion_8bit) keep the states of
// CUDA parameters in pinned host memory instead and stream them through a small device staging area
// each step (optim/cuda/paged_states.h), running the same kernels on the staged copy: results are bit
// for bit those of the unpaged optimizer, and device memory is the staging slots only. The paged states of
// the parameters that start together share one pinned arena in parameter order, so a step moves them in
// a few large copies rather than several per tensor. For parameters
// on the CPU (and in builds without CUDA) paged changes nothing: the states are host memory already.
// Like bitsandbytes, tensors with fewer than min_8bit_size (4096) elements keep 32-bit states even in the
// 8-bit optimizers, updated by bitsandbytes' 32-bit rule.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace qtune {

struct AdamHyper;  // optim/cpu/optim_kernels.h

enum class OptimizerKind { AdamW, AdamW8bit, Lion8bit };
const char* optimizer_kind_name(OptimizerKind k);                 // "adamw", "adamw_8bit", "lion_8bit"
OptimizerKind optimizer_kind_from_name(const std::string& name);  // throws ErrorKind::Usage listing names

struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::AdamW;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // Lion8bit: use betas (0.9, 0.99) as bitsandbytes does
  int64_t min_8bit_size = 4096;                   // 8-bit kinds: smaller tensors keep f32 states
  int64_t blocksize = 256;                        // 8-bit state block size (bitsandbytes: 256)
  bool paged = false;                             // CUDA params: states in pinned host memory, streamed
  int64_t paged_slot_bytes = 16 << 20;            // paged: each of the 2 device staging slots
  // bitsandbytes' defaults for a kind (AdamW8bit: betas (0.9, 0.999), Lion8bit: (0.9, 0.99)).
  static OptimizerConfig defaults(OptimizerKind kind);
};

// The config for a transformers --optim name: adamw_torch, adamw_torch_fused, adamw_32bit, adamw,
// adamw_8bit, adamw_bnb_8bit, lion_8bit, and paged_adamw_32bit, paged_adamw_8bit, paged_lion_8bit
// (paged = true). The 32-bit names use torch's AdamW rule (OptimizerKind::AdamW). Throws Usage.
OptimizerConfig optimizer_config_from_name(const std::string& name);

// One trainable tensor: param F32 (updated in place) and its gradient F32 of the same shape, both on the
// CPU or both on CUDA (states live beside the param, or in pinned host memory when paged; CUDA steps
// equal CPU steps bit for bit). An
// undefined grad skips the parameter in step(), as torch skips p.grad None.
struct ParamRef {
  std::string name;
  Tensor param;
  Tensor grad;
};

struct ParamGroup {
  std::vector<ParamRef> params;
  double weight_decay = 0.0;
  double lr_scale = 1.0;  // the group's lr = lr_scale · the lr given to step()
};

// Optimizer state of one parameter.
struct ParamState {
  int64_t step = 0;
  bool quantized = false;   // true: state1/state2 are U8 codes with absmax1/absmax2
  Tensor state1, state2;    // F32 or U8, the parameter's shape (Lion: state2 undefined)
  Tensor absmax1, absmax2;  // F32 [ceil(numel / blocksize)] when quantized
};

class Optimizer {
 public:
  Optimizer(const OptimizerConfig& cfg, std::vector<ParamGroup> groups);
  ~Optimizer();
  Optimizer(Optimizer&&) noexcept;
  Optimizer& operator=(Optimizer&&) noexcept;

  // One update of every parameter with a defined grad, at learning rate lr (× the group's lr_scale).
  void step(double lr);
  void zero_grad();  // fills the defined grads with zeros

  const OptimizerConfig& config() const { return cfg_; }
  std::vector<ParamGroup>& groups() { return groups_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // State of a parameter by name (created lazily at its first step; throws when absent). Paged states
  // are host tensors; state(), save() and load() first wait for the last step's copies.
  const ParamState& state(const std::string& name) const;
  bool has_state(const std::string& name) const;

  // Checkpoint: one safetensors file with "<param>.state1" / ".state2" / ".absmax1" / ".absmax2" per
  // parameter and metadata {"optimizer": kind, "steps": JSON {param: step}}. load() checks the kind, every
  // name and shape against this optimizer's parameters and names the file in every error.
  void save(const std::string& path) const;
  void load(const std::string& path);

 private:
  OptimizerConfig cfg_;
  std::vector<ParamGroup> groups_;
  std::vector<ParamState> states_;  // parallel to the flattened params
  std::vector<std::string> names_;
  struct Maps;
  std::unique_ptr<Maps> maps_;
  struct Paged;                   // the PagedStates stream engine (CUDA builds)
  std::unique_ptr<Paged> paged_;  // last member: destroyed first, waiting for copies in flight
  ParamState make_state(const ParamRef& p) const;
  void wait_paged() const;
  // The CUDA kernel of this kind on device pointers (states F32, or U8 codes + absmax when quantized).
  void update_cuda(bool quantized, float* w, const float* gr, void* s1, void* s2, float* a1, float* a2,
                   int64_t n, const AdamHyper& h);  // CUDA builds
};

}  // namespace qtune
