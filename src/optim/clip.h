// Gradient clipping by global L2 norm with torch.nn.utils.clip_grad_norm_'s semantics: each gradient's
// norm in f32 (accumulated in f64 here), the total norm = sqrt(Σ normᵢ²) in f32, clip coefficient
// min(1, max_norm / (total + 1e-6)) in f32, every gradient multiplied by it (also when it is 1, as torch
// does). Returns the total norm before clipping.
#pragma once
#include <vector>

#include "optim/optimizer.h"

namespace qtune {

float clip_grad_norm(std::vector<ParamGroup>& groups, double max_norm);
// The total norm alone (no clipping).
float grad_global_norm(const std::vector<ParamGroup>& groups);

}  // namespace qtune
