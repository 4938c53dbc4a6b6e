// One LoRA adapter on one Linear, plugged in as its LinearAdapter: out += scale·(x·Aᵀ)·Bᵀ, with
// scale = alpha/r (alpha/sqrt(r) with rsLoRA). With DoRA (a magnitude vector m [O]) the layer's output
// becomes b + (m / ‖W + scale·B·A‖_row) ⊙ (x·Wᵀ + scale·(x·Aᵀ)·Bᵀ), as PEFT's DoraLinearLayer computes it
// (the row norm is treated as a constant).
//
// A, B (and m) are the trainable masters: F32 CPU tensors. The forward uses F32 copies on the model's
// device (B pre-multiplied by scale) and computes the LoRA term in f32 also for a bf16 model, as PEFT
// does (adapter weights stay f32, x is cast to them); call refresh() after changing A/B/m.
// Dropout (lora_dropout) belongs to training; this forward is PEFT's eval mode (no dropout).
#pragma once
#include <cstdint>
#include <string>

#include "model/linear.h"

namespace qtune {

struct LoraLayer : LinearAdapter {
  std::string module;  // "model.layers.0.self_attn.q_proj"
  int64_t r = 0;
  double alpha = 0, scale = 0;
  Tensor A;          // F32 CPU [r, I]
  Tensor B;          // F32 CPU [O, r]
  Tensor magnitude;  // F32 CPU [O]  DoRA only (PEFT: lora_magnitude_vector)

  // Prepares the device copies (and DoRA's row scale from the base weight). base is the Linear this
  // layer is attached to.
  void refresh(const Linear& base, Device device, DType act_dtype);
  void apply(Tensor& out, const Tensor& x) const override;

 private:
  Tensor a_dev_, b_dev_;  // F32 [r, I], scale·B [O, r] on the model's device
  Tensor dora_scale_;     // F32 [O] on the device: m / ‖W + scale·B·A‖_row (peft/dora_ops.h)
  Tensor base_bias_;      // F32 [O] on the device or undefined (DoRA re-adds it outside the scaling)
};

// PEFT's default init for a fresh layer, seeded: A ~ kaiming_uniform_(a=√5) = U(-1/√I, 1/√I)
// (gain √(2/(1+a²)) = √(1/3), bound = gain·√(3/I)), B = 0. init "false": B ~ U(-1/√r, 1/√r) too
// (nn.Linear's own init); "gaussian": A ~ N(0, 1/r), B = 0.
void init_lora_weights(LoraLayer& l, int64_t in_features, int64_t out_features, const std::string& init,
                       uint64_t seed);

// DoRA's initial magnitude: the row norms ‖W[o, :]‖ of the dense base weight (F32 CPU [O]).
Tensor dora_initial_magnitude(const Linear& base);

}  // namespace qtune
