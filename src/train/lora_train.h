// Training-mode LoRA adapters: wraps each peft/ LoraLayer attached to a model Linear in an adapter that
// (1) applies PEFT's training forward out += scale·(dropout(x)·Aᵀ)·Bᵀ and (2) implements the
// TrainableAdapter backward (train/linear_backward.h), accumulating the gradients of A and B under their
// PEFT keys ("base_model.model.<module>.lora_A.weight" / "lora_B.weight") in a TrainableParams.
//
// Dropout masks are a pure function of (seed, micro-batch counter, layer, element), so the gradient
// checkpointing recompute and the backward see the forward's mask without storing it:
//   LoraTraining t(lora, params, seed, dropout);  t.set_step(micro_batch_index);  t.set_training(true);
// On a GPU model the trainable A and B live on the device (F32 masters, updated there by the optimizer) and
// the LoRA GEMMs read BF16 copies of them (f32 accumulation), refreshed after each step;
// sync_to_host() brings them back to the LoraModel for saving.
// Trained biases (bias "all" / "lora_only") and modules_to_save (lm_head, model.embed_tokens) register
// under the model's own parameter names (the backward asks those); on a GPU model their F32 masters live on
// the device and refresh() converts them into the model's tensors.
// Destroying it puts the plain LoraLayers back on the Linears. DoRA layers train A, B and the magnitude
// ("...lora_magnitude_vector") with PEFT's detached weight norm (peft/dora_ops.h), with or without dropout.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <vector>

#include "model/llama_model.h"
#include "peft/lora_model.h"
#include "train/trainable.h"

namespace qtune {

struct TrainLoraAdapter;  // lora_train.cpp

// Reuse of mid = (m ⊙ x)·Aᵀ [N, r] inside a Block pass (train/pass_scope.h): an unchunked training block's
// forward keeps each LoRA adapter's mid, its recompute and backward multiply with it instead of reading x
// again (a token-chunked block keeps them from the recompute for the backward); and before the
// forwards of Linears that read one input (q, k, v on h1; gate, up on h2) lora_forward_group computes their
// mids in one lora_down_group (train/lora_fused.h) that reads x once. Each module keeps its own mask, so the
// loss and gradients are those of the separate products. The Block calls lora_forward_group; it does nothing
// outside a pass, for other adapters and for DoRA, and on the CPU outside a backward's recompute.
void lora_forward_group(std::initializer_list<const Linear*> linears, const Tensor& x);
// Drops the mids kept in a pass (Block::backward, at its end).
void lora_forget_pass(uint64_t pass);
// Tests and benchmarks: off recomputes every mid (the path before the reuse); on by default, off when the
// environment has QTUNE_LORA_MID_REUSE=0.
void lora_set_mid_reuse(bool on);
uint64_t lora_mid_reuse_hits();  // how many kept mids were taken (used for the last time) so far

class LoraTraining {
 public:
  LoraTraining(LlamaModel& model, LoraModel& lora, TrainableParams& params, uint64_t seed, double dropout);
  ~LoraTraining();
  LoraTraining(const LoraTraining&) = delete;
  LoraTraining& operator=(const LoraTraining&) = delete;

  void set_training(bool on);  // off: no dropout (evaluation)
  // After an optimizer step: LoraModel::refresh() (new forward copies of A and B), keeping this
  // training adapter on the Linears (refresh puts the plain layers back). Nothing on a GPU model.
  void refresh();
  // GPU model: copies the device masters back into the LoraModel's A and B (before saving it).
  void sync_to_host();
  void set_step(uint64_t counter);  // selects the dropout masks of one micro-batch

  struct State {
    bool training = false;
    uint64_t seed = 0, counter = 0;
    double dropout = 0;
    uint64_t generation = 0;  // bumped by set_step, set_training and refresh: kept mids go stale
  };

 private:
  LlamaModel& model_;
  LoraModel& lora_;
  std::shared_ptr<State> state_;
  struct Slot {
    Linear* linear;
    std::shared_ptr<const LinearAdapter> original;
    std::shared_ptr<const LinearAdapter> training;
    std::shared_ptr<TrainLoraAdapter> lora;  // the same adapter, typed
  };
  std::vector<Slot> slots_;
  struct ExtraSlot {
    Tensor device_master;  // F32 on the GPU (undefined on a CPU model: the LoraModel's master trains)
    Tensor host_master;    // the LoraModel's F32 CPU master
    Tensor* slot;          // the model's tensor
  };
  std::vector<ExtraSlot> extras_;
};

}  // namespace qtune
