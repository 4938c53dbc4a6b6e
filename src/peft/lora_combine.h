// Combining LoRA adapters by weights, as PEFT's LoraModel.add_weighted_adapter does for
// combination_type "linear" and "cat" (the SVD / TIES / DARE variants are not implemented):
//   linear   all ranks equal; per module, with c_i = w_i·scale_i:
//            A = Σ sign(c_i)·√|c_i|·A_i,  B = Σ √|c_i|·B_i           (rank r)
//   cat      A = [c_1·A_1; c_2·A_2; ...] (rows), B = [B_1, B_2, ...] (columns)   (rank Σ r_i, exact:
//            B·A = Σ c_i·B_i·A_i)
// The result is a LoRA adapter with r = lora_alpha = the new rank (scale 1, or √r when the first adapter
// uses rsLoRA, as PEFT copies its config), targeting the union of the adapters' modules.
#pragma once
#include <string>
#include <vector>

#include "model/llama_model.h"
#include "peft/lora_model.h"

namespace qtune {

// adapters: LoRA adapters of this model (not DoRA; no trained biases, modules_to_save or rank_pattern).
// The new adapter is created attached to the model (as LoraModel::create). Throws ErrorKind::Config for
// mismatched ranks under "linear" or weights that do not pair with the adapters, ErrorKind::Unsupported for
// other combination types or adapters it cannot combine, naming them (names[i] names adapters[i]).
LoraModel combine_lora_adapters(LlamaModel& model, const std::vector<const LoraModel*>& adapters,
                                const std::vector<std::string>& names, const std::vector<double>& weights,
                                const std::string& combination_type);

}  // namespace qtune
