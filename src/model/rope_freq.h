// RoPE inverse frequencies for a model config, as transformers computes them: the default
// 1 / theta^(2i/D) (in f32), divided by the factor for "linear" scaling, or reshaped band by band for
// "llama3" scaling (transformers' _compute_llama3_parameters).
#pragma once
#include <vector>

#include "io/hf_config.h"

namespace qtune {

// inv_freq [D/2] for head dim D = cfg.head_dim. Throws ErrorKind::Unsupported for an unknown rope type.
std::vector<float> rope_inv_freq(const ModelConfig& cfg);

}  // namespace qtune
