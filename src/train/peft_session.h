// PeftSession: the one interface the SFT trainer (trainer.h) drives, whatever PEFT method trains. A session
// owns the adapter, its training wrapper and the TrainableParams registry the optimizer walks:
//   lora, DoRA      LoraModel + LoraTraining (train/lora_train.h; dropout masks per micro-batch)
//   ia3             Ia3Model + Ia3Training (train/ia3_train.h)
//   bottleneck      BottleneckModel + BottleneckTraining (train/bottleneck_train.h; qtune's folder format)
//   adaption_prompt AdaptionPromptModel + AdaptionPromptTraining (train/adaption_train.h: LLaMA-Adapter,
//                   a gated prompt attention in the top layers)
//   prompt_tuning, p_tuning, prefix_tuning
//                   PromptLearningModel + PromptTraining (train/prompt_train.h: virtual tokens before each
//                   row, or per-layer key/value prefixes)
// The first four adapt Linears or attention: a micro-batch runs as collated. The prompt types rewrite it
// (prepare) and gather their gradients after the backward (after_backward).
//
//   std::unique_ptr<PeftSession> s = create_peft_session(model, args, tok);   // or load_peft_session(...)
//   s->set_training(true);
//   s->set_step(k);                                    // micro-batch k (LoRA dropout masks)
//   PeftBatch b = s->prepare(mb, first_token_is_target);
//   StepOptions so;  b.apply(so);
//   causal_lm_forward_backward(model, b.ids(), b.labels(), &s->params(), so);   // b.targets labels
//   s->after_backward(b);
//   ... optimizer step on s->params() ...;  s->refresh();
//   s->sync_to_host();  s->save(dir);  s->save_state(dir);   // PEFT folder (+ checkpoint extras)
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "model/llama_model.h"
#include "train/causal_lm.h"
#include "train/collate.h"
#include "train/prompt_train.h"
#include "train/trainable.h"
#include "train/trainer.h"

namespace qtune {

class Tokenizer;

enum class PeftKind { Lora, Ia3, Bottleneck, PromptTuning, PTuning, PrefixTuning, AdaptionPrompt, Full };

// "lora" | "ia3" | "bottleneck" | "prompt_tuning" | "p_tuning" | "prefix_tuning" | "adaption_prompt" (the
// --peft-type values) | "full" (full fine-tuning, --full-finetune: no adapter, every weight trains and the
// output is a model folder; train/full_train.h).
const char* peft_kind_name(PeftKind k);
// From a --peft-type value or an adapter_config.json peft_type ("LORA", "PROMPT_TUNING" ...), any case.
// Throws ErrorKind::Usage naming `what` and listing the choices.
PeftKind peft_kind_from_name(const std::string& name, const std::string& what = "--peft-type");
bool is_prompt_kind(PeftKind k);  // prompt_tuning, p_tuning, prefix_tuning

// One micro-batch as the model sees it: the collated one (Linear adapters) or the prompt types' extended
// batch. Keep it alive through its step (StepOptions point into it).
struct PeftBatch {
  const MicroBatch* mb = nullptr;
  std::unique_ptr<PromptStep> prompt;  // prompt types only
  int64_t targets = 0;                 // labels other than −100 (the loss count of this micro-batch)

  const Tensor& ids() const { return prompt ? prompt->ids : mb->ids; }           // I32 [B, T'] CPU
  const Tensor& labels() const { return prompt ? prompt->labels : mb->labels; }  // I32 [B, T'] CPU
  // Points so at this batch's positions and seq_ids (and virtual-token inputs), clearing the others.
  void apply(StepOptions& so) const;
};

class PeftSession {
 public:
  virtual ~PeftSession() = default;
  virtual PeftKind kind() const = 0;
  // For the log: "12 LoRA layers", "6 IA3 vectors", "20 virtual tokens (PROMPT_TUNING, RANDOM init)".
  virtual std::string describe() const = 0;
  TrainableParams& params() { return params_; }
  // Positions the adapter puts before each row (prompt types: num_virtual_tokens; 0 otherwise).
  virtual int64_t virtual_tokens() const { return 0; }

  virtual void set_training(bool) {}  // off: evaluation (no dropout)
  virtual void set_step(uint64_t) {}  // the micro-batch counter (dropout masks)
  // first_token_is_target: whether each row's first token is a trained label (unshifted), which
  // prompt / P-tuning then trains its last virtual token to predict, as PEFT does.
  virtual PeftBatch prepare(const MicroBatch& mb, bool first_token_is_target) const;
  virtual void after_backward(const PeftBatch&) {}  // prompt types: gradients into their tensors
  virtual void refresh() {}                         // after each optimizer step
  virtual void sync_to_host() {}                    // GPU model: device masters back (before saving)
  // The PEFT folder (adapter_config.json + adapter_model.safetensors) into dir.
  virtual void save(const std::string& dir) const = 0;
  // Checkpoint state beyond the folder (P-tuning's encoder ...) into / from checkpoint folder dir.
  virtual void save_state(const std::string&) const {}
  virtual void load_state(const std::string&) {}
  // Logits F32 [B, T, V] of ids I32 [B, T] with the adapter as it is in memory, as inference places it
  // (prompt types: behind the virtual tokens). Call with training off (no dropout).
  virtual Tensor logits(const LlamaModel& model, const Tensor& ids) const { return model.forward(ids); }

 protected:
  TrainableParams params_;
};

// The PEFT type a run trains: args.peft_type, else the --adapter folder's, else lora. Throws
// ErrorKind::Usage when --peft-type and the folder's peft_type differ.
PeftKind training_peft_kind(const TrainerArgs& args);

// Checks the PEFT settings of args against the chosen kind before anything loads: ErrorKind::Usage for
// --packing with a prompt type (PEFT has no per-example virtual tokens), TEXT init without its text or text
// without TEXT init, --prefix-projection without prefix tuning, sizes <= 0; LoRA settings via validate().
void check_peft_args(const TrainerArgs& args, PeftKind kind);

// A fresh adapter from args (seeded with args.seed), attached and registered. tok: for TEXT init.
std::unique_ptr<PeftSession> create_peft_session(LlamaModel& model, const TrainerArgs& args,
                                                 const Tokenizer& tok);
// An adapter folder (--adapter: continue training it, as PEFT's is_trainable=True) or, checkpoint true,
// a trainer checkpoint folder (its folder plus load_state). kind must match the folder's peft_type.
std::unique_ptr<PeftSession> load_peft_session(LlamaModel& model, const std::string& dir, PeftKind kind,
                                               const TrainerArgs& args, const Tokenizer& tok,
                                               bool checkpoint);

}  // namespace qtune
