// LLaMA-Adapter in PEFT's format (peft_type ADAPTION_PROMPT): in each of the top adapter_layers layers a
// learned prompt A [1, adapter_len, C] and a gate g [1] (zero at init). The layer's attention output gains
//   o_proj( g · softmax(q·Kᵀ/√D) · V ),  K = k_proj(A), V = v_proj(A)   (no RoPE on K; q rotated as usual)
// a separate softmax over the adapter_len prompt rows only (GQA: query head h reads kv head h/(Hq/Hkv)),
// as PEFT 0.21's AdaptedAttention computes it: the gate multiplies the probabilities as it is (no tanh),
// and the adapter output goes through the whole o_proj, so a biased o_proj adds its bias twice. Saved keys:
//   base_model.model.model.layers.<i>.self_attn.adaption_prompt  [1, adapter_len, C]
//   base_model.model.model.layers.<i>.self_attn.adaption_gate    [1]
// Inference on the CPU and CUDA (LlamaLayer::attn_adapter); training on both through
// train/adaption_train.h (qtune finetune --peft-type adaption_prompt).
//
//   AdaptionPromptModel ap = AdaptionPromptModel::load(model, "folder");   // attached to the model
//   ... generate ...;  ap.detach();
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/llama_model.h"
#include "peft/adaption_prompt_config.h"

namespace qtune {

class AdaptionPromptModel {
 public:
  struct Layer {
    int index = 0;  // model layer
    Tensor prompt;  // F32 CPU [1, adapter_len, C]
    Tensor gate;    // F32 CPU [1]
  };

  // Fresh prompts N(0, 1) and zero gates (PEFT's init), attached. Errors: adapter_layers outside
  // [1, layers], adapter_len <= 0, a model whose q heads x head_dim is not its hidden size.
  static AdaptionPromptModel create(LlamaModel& model, const AdaptionPromptConfig& cfg, uint64_t seed);
  // Reads a PEFT folder and attaches it; errors name the file (shapes vs the config and the model's hidden
  // size, missing or extra tensors).
  static AdaptionPromptModel load(LlamaModel& model, const std::string& dir);
  AdaptionPromptModel(AdaptionPromptModel&&) = default;
  AdaptionPromptModel& operator=(AdaptionPromptModel&&) = default;

  void save(const std::string& dir) const;
  const AdaptionPromptConfig& config() const { return cfg_; }
  LlamaModel& model() const { return *model_; }
  std::vector<Layer>& layers() { return layers_; }
  // Recomputes the layers' key/value rows after prompts or gates changed, and (re)attaches them.
  void refresh();
  void detach();

 private:
  AdaptionPromptModel() = default;
  LlamaModel* model_ = nullptr;
  AdaptionPromptConfig cfg_;
  std::vector<Layer> layers_;
};

}  // namespace qtune
