// The SFT trainer behind `qtune finetune`: parameter-efficient fine-tuning of a Llama-family model on the
// CPU (F32) or one GPU (BF16 activations, F32 adapter weights, gradients and optimizer states on the
// device) with Hugging Face Trainer / TRL SFTTrainer semantics (names, defaults, loss normalisation,
// schedules). The PEFT method (--peft-type): LoRA / DoRA / QLoRA (default), IA3, bottleneck adapters,
// prompt tuning, P-tuning, prefix tuning or LLaMA-Adapter (adaption_prompt), each driven through one
// PeftSession (train/peft_session.h).
//
//   TrainerArgs a;  a.model_dir = "models/qtune-tiny-8m";  a.data_path = "data.jsonl";  a.out_dir = "out";
//   a.peft_type = "ia3";                  // or leave empty: LoRA (a.lora)
//   TrainResult r = run_finetune(a);      // out/: the adapter folder, training_log.csv, loss_curve.png,
//                                         //       checkpoint-N/ (adapter, optimizer, trainer_state.json)
//
// Prompt tuning / P-tuning / prefix tuning put their virtual tokens before each row, so --packing is
// refused with them; their last virtual token learns to predict a row's first token when that token is a
// target (PEFT's label shift), which completion-only loss turns off.
//
// One optimizer step = gradient_accumulation_steps micro-batches of per_device_train_batch_size rows; the
// loss of a step is Σ token losses / Σ target tokens over all its micro-batches (so accumulation equals
// one big batch). Data order: the train split shuffled per epoch with (seed, epoch); dropout masks from
// (seed, micro-batch counter): a checkpoint's step number therefore fixes the data position and RNG, and
// --resume continues bit-identically.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/load_options.h"
#include "peft/adaption_prompt_config.h"
#include "peft/bottleneck_config.h"
#include "peft/ia3_config.h"
#include "peft/lora_config.h"
#include "peft/prompt_learning.h"

namespace qtune {

class LlamaModel;
class PeftSession;

struct TrainerArgs {
  std::string model_dir, data_path, out_dir;
  std::string adapter_dir;  // continue training this PEFT adapter (any trainable peft_type) instead
  // The method: lora (also DoRA: lora.use_dora), ia3, bottleneck, prompt_tuning, p_tuning, prefix_tuning,
  // adaption_prompt.
  // Empty: lora, or the --adapter folder's peft_type.
  std::string peft_type;
  LoraConfig lora;              // r, lora_alpha, lora_dropout, target_modules, use_rslora, use_dora
  Ia3Config ia3;                // target_modules, feedforward_modules (empty: PEFT's defaults)
  BottleneckConfig bottleneck;  // adapter_style, bottleneck_size, non_linearity, target_modules
  // num_virtual_tokens, prompt_tuning_init(_text), encoder_hidden_size, prefix_projection (its
  // peft_type comes from peft_type above).
  PromptLearningConfig prompt;
  AdaptionPromptConfig adaption;  // adapter_len, adapter_layers (LLaMA-Adapter)
  LoadOptions load;               // --load-in-4bit / --load-in-8bit
  double learning_rate = 2e-4;
  double num_train_epochs = 3;
  int64_t max_steps = -1;  // > 0 overrides epochs
  int64_t per_device_train_batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  std::string lr_scheduler_type = "linear";
  double warmup_ratio = 0;
  double weight_decay = 0;
  double max_grad_norm = 1.0;  // <= 0: no clipping
  std::string optim = "adamw_torch";
  uint64_t seed = 42;
  int64_t eval_steps = 0;  // 0: evaluate only at the end (when there is an eval split)
  int64_t save_steps = 0;  // 0: no intermediate checkpoints
  int64_t logging_steps = 1;
  int64_t max_seq_length = 1024;
  bool packing = false;
  bool completion_only_loss = false;
  double eval_split = 0;             // fraction of rows held out for eval loss
  int gradient_checkpointing = -1;   // 1 on, 0 off, -1 auto: on for GPU training, off on the CPU
  bool offload_activations = false;  // GPU: checkpointed block inputs in pinned host memory
  std::string device = "auto";       // cpu, cuda, auto (the GPU when one is usable)
  bool resume = false;               // continue from the newest out/checkpoint-N
  int64_t stop_after_steps = -1;     // testing: exit after this step as if killed (no final save)
  bool quiet = false;                // no progress bar
  // Data parallel (WORLD_SIZE > 1): shard the base weights and the optimizer states over the ranks
  // (dist/fsdp.h, dist/sharded_optimizer.h), and all-reduce each block's gradients as its backward ends.
  bool fsdp = false;
  bool overlap_grad_reduce = true;
  // Testing: called at the end of a completed run, after the adapter is saved, with the trained model
  // and adapter still in memory (training mode off).
  std::function<void(const LlamaModel&, const PeftSession&)> on_trained;
};

struct TrainResult {
  std::vector<double> losses;       // per optimizer step (from the start, also on resume)
  std::vector<double> eval_losses;  // per evaluation
  int64_t steps = 0;                // total steps of the run
  double tokens_per_s = 0;          // over the steps this process ran
  bool stopped_early = false;       // stop_after_steps hit
  // --fsdp: the sharded base weights' bytes whole, and this rank's resident shards and gather buffers.
  int64_t fsdp_full_bytes = 0, fsdp_shard_bytes = 0, fsdp_buffer_bytes = 0;
};

TrainResult run_finetune(const TrainerArgs& args);

}  // namespace qtune
