// Training glue for prompt learning (peft/prompt_learning.h): prompt tuning, P-tuning and prefix tuning,
// one call before and one after each micro-batch's causal_lm_forward_backward, as PEFT trains them:
//   prompt tuning, P-tuning: P virtual embeddings before each row's token embeddings (the model input is
//     [B, P + T]; positions 0..P−1 then P + the row's positions; virtual labels −100, except that the last
//     virtual token predicts the row's first token when that token is a target (PEFT prepends P labels
//     of −100 to the unshifted labels, so its shift makes label[0] the last virtual token's target));
//     the gradient comes back through StepOptions::d_inputs_embeds;
//   prefix tuning: per layer P key/value rows every query sees (StepOptions::prefixes), the tokens at
//     positions P + t (PEFT: cache_position after the prefix), labels unchanged.
// The trainable tensors live on the CPU in F32 and are registered under PEFT's parameter names:
//   prompt_encoder.default.embedding.weight (and P-tuning's mlp_head.*, prefix projection's transform.*).
// P-tuning and prefix_projection train the encoder; refresh() recomputes prompt_embeddings from it.
// Packed rows (several examples in a row) are rejected: PEFT has no per-example virtual tokens.
//
//   PromptTraining pt(model, pl, params);
//   PromptStep st = pt.prepare(mb.ids, mb.labels, &mb.positions, &mb.seq_ids,
//   /*first_token_is_target=*/true); StepOptions so;  st.apply(so); LossSum r =
//   causal_lm_forward_backward(model, st.ids, st.labels, &params, so);   // r.count == st.targets
//   pt.backward(st);                 // accumulates the prompt gradients into params
//   ... optimizer step ...;  pt.refresh();
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "model/llama_model.h"
#include "ops/attention.h"
#include "peft/prompt_learning.h"
#include "train/causal_lm.h"
#include "train/trainable.h"

namespace qtune {

// What one micro-batch runs with. Holds the tensors StepOptions points at: keep it alive through the step.
struct PromptStep {
  Tensor ids, labels;  // CPU I32 [B, T'] (T' = P + T for prompt / P-tuning, T for prefix tuning)
  Tensor positions;    // CPU I32 [B·T']
  Tensor seq_ids;      // CPU I32 [B, T'] or undefined
  Tensor inputs_embeds, d_inputs_embeds;     // F32 [B·T', C] on the model's device (prompt / P-tuning)
  std::vector<Tensor> prefix_k, prefix_v;    // per layer [B, P, Hkv, D] (activation dtype, device)
  std::vector<Tensor> prefix_dk, prefix_dv;  // their gradients, F32, same shapes
  std::vector<AttentionPrefix> prefixes;     // per layer, pointing at the four above
  int64_t B = 0, T = 0, P = 0;
  int64_t targets = 0;  // labels other than −100 (the step's loss count)
  // Points so at this step's positions, seq_ids, inputs_embeds / d_inputs_embeds or prefixes.
  void apply(StepOptions& so);

  PromptStep() = default;
  PromptStep(PromptStep&&) = default;  // moves keep the prefixes' gradient pointers valid
  PromptStep& operator=(PromptStep&&) = default;
  PromptStep(const PromptStep&) = delete;
  PromptStep& operator=(const PromptStep&) = delete;
};

class PromptTraining {
 public:
  // Registers the trainable tensors of pl in params (pl and model must outlive this).
  PromptTraining(const LlamaModel& model, PromptLearningModel& pl, TrainableParams& params);

  // ids, labels: CPU I32 [B, T] as collate() makes them (labels already shifted); positions I32 [B·T] and
  // seq_ids I32 [B, T] optional. first_token_is_target: the unshifted label of each row's first token is
  // the token itself (plain language modelling; false with completion-only loss), which PEFT's
  // prompt / P-tuning then trains the last virtual token to predict. Throws ErrorKind::Unsupported for
  // packed rows and ErrorKind::Shape when P + T exceeds the model's context.
  PromptStep prepare(const Tensor& ids, const Tensor& labels, const Tensor* positions = nullptr,
                     const Tensor* seq_ids = nullptr, bool first_token_is_target = true) const;
  // After causal_lm_forward_backward with st: accumulates d(loss)/d(trainable tensors) into params.
  void backward(const PromptStep& st);
  // After the optimizer changed the tensors: prompt_embeddings from the encoder (if any).
  void refresh();
  // Checkpoints: the trainable tensors by their parameter names in one safetensors file (PEFT's folder
  // keeps only the encoder's output, so resuming P-tuning / prefix_projection needs this). load checks
  // names and shapes, naming the file; refreshes.
  void save_state(const std::string& path) const;
  void load_state(const std::string& path);

  const PromptLearningModel& adapter() const { return pl_; }

 private:
  const LlamaModel& model_;
  PromptLearningModel& pl_;
  std::vector<std::pair<std::string, Tensor>> tensors_;  // (name, trainable tensor), registration order
  std::vector<Tensor*> grads_;  // per encoder param (or the one prompt_embeddings gradient)
};

}  // namespace qtune
