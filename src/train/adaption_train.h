// Training the LLaMA-Adapter (peft/adaption_prompt.h, PEFT's ADAPTION_PROMPT): each adapted layer's
// attention add-on is swapped for one the training Block runs and backpropagates
// (TrainableAttentionAdapter in train/block.h). Per adapted layer, with A the prompt [Lp, C] and g the gate:
//   forward   K = k_proj(A), V = v_proj(A) [Lp, Hkv·D]  (each step: A changes; Lp rows are cheap),
//             extra = g·softmax(q·Kᵀ/√D)·V  (peft/adaption_attention.h), which joins o_proj's input
//   backward  d(extra) = d(attention output) (same o_proj) → dq += …, dK, dV, dg;
//             dA += dK·W_k + dV·W_v through the frozen k_proj / v_proj (dense, NF4/FP4 or int8:
//             train/linear_backward.h)
// The prompt and gate register under PEFT's names (base_model.model.model.layers.<i>.self_attn.
// adaption_prompt / adaption_gate) as the tensors the forward reads: the F32 masters on the CPU, F32 device
// copies on a GPU model (sync_to_host() brings them back before saving). The prompt rows are seen by every
// query (no causal mask, packed examples alike); positions do not touch them (no RoPE on K).
//
//   AdaptionPromptModel ap = AdaptionPromptModel::create(model, cfg, seed);
//   TrainableParams params;
//   AdaptionPromptTraining t(ap, params);
//   ... causal_lm_forward_backward(model, ids, labels, &params, so), optimizer steps ...;
//   t.sync_to_host();  ap.save(dir);
#pragma once
#include <memory>
#include <vector>

#include "peft/adaption_prompt.h"
#include "train/trainable.h"

namespace qtune {

struct TrainAdaptionAttention;  // adaption_train.cpp

class AdaptionPromptTraining {
 public:
  AdaptionPromptTraining(AdaptionPromptModel& ap, TrainableParams& params);
  ~AdaptionPromptTraining();  // syncs, then puts the inference add-ons back (AdaptionPromptModel::refresh)
  AdaptionPromptTraining(const AdaptionPromptTraining&) = delete;
  AdaptionPromptTraining& operator=(const AdaptionPromptTraining&) = delete;

  void sync_to_host();  // GPU model: the device tensors back into the masters

 private:
  AdaptionPromptModel& ap_;
  std::vector<std::shared_ptr<TrainAdaptionAttention>> layers_;  // per adapted layer
};

}  // namespace qtune
