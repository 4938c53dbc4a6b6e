// Weight-decay parameter grouping as transformers' Trainer does it: a parameter gets no decay when its
// lower-cased name matches "bias", "layernorm", "rmsnorm", "(^|.)norm($|.)" or "_norm($|.)" (so Llama's
// input_layernorm / post_attention_layernorm / model.norm weights and every bias); all others decay.
#pragma once
#include <string>
#include <vector>

#include "optim/optimizer.h"

namespace qtune {

bool decays(const std::string& param_name);
// Two groups: [0] decay with weight_decay, [1] no decay (either may be empty).
std::vector<ParamGroup> group_by_weight_decay(const std::vector<ParamRef>& params, double weight_decay);

}  // namespace qtune
