// Whole-model training pass of a Llama-family causal LM: embedding → Blocks (train/block.h) → final
// RMSNorm → chunked cross-entropy against the LM head (ops/loss.h), then backward through the same
// chain, accumulating into every registered TrainableParams gradient (embedding and tied LM head share
// model.embed_tokens.weight). Labels follow HF: already shifted, −100 ignored; the returned loss is the
// sum and count, the gradient is grad_scale·d(sum) (the trainer passes 1/total count of the step).
//
//   TrainableParams p;  register_full_finetune(p, model);
//   LossSum r = causal_lm_forward_backward(model, ids, labels, &p, {});  // mean loss r.loss / r.count
#pragma once
#include <vector>

#include "core/tensor.h"
#include "model/llama_model.h"
#include "ops/attention.h"
#include "ops/loss.h"
#include "train/block_hooks.h"
#include "train/trainable.h"

namespace qtune {

struct StepOptions {
  bool gradient_checkpointing = false;  // keep only each block's input; recompute in backward
  float grad_scale = 1.0f;              // gradients are of grad_scale·Σ loss
  int64_t loss_chunk_rows = 512;        // rows of logits materialised at a time
  // With gradient checkpointing, steps of more token rows run each block's per-token layers over chunks of
  // this many rows (BlockInputs::chunk_rows; 0: never).
  int64_t token_chunk_rows = 4096;
  // With gradient checkpointing on a GPU model: keep the blocks' saved inputs in pinned host memory between
  // the forward and the backward (train/cuda/activation_offload.h).
  bool offload_activations = false;
  // With gradient checkpointing on a GPU model and no token chunks: keep every block's attention output and
  // log-sum-exp (BlockInputs::keep_attention). -1: when they fit in 1/8 of the GPU memory not in use at the
  // start of the step (device_memory_capacity, so QTUNE_GPU_MEMORY_LIMIT counts); 0: never; 1: always.
  int keep_attention = -1;
  const Tensor* positions = nullptr;  // I32 [B·T]; default 0..T−1 in every row
  const Tensor* seq_ids = nullptr;    // I32 [B, T]: packed examples (attention inside equal-id runs)
  // Prompt tuning and the like: the first block's input F32 [B·T, C] instead of the embedding lookup
  // (ids are then only range-checked, and the embedding table gets no gradient) ...
  const Tensor* inputs_embeds = nullptr;
  // ... and, when non-null, d(loss)/d(first block input) F32 [B·T, C] is accumulated here.
  Tensor* d_inputs_embeds = nullptr;
  // Prefix tuning: one AttentionPrefix per layer (ops/attention.h: key/value rows every query sees, and
  // their gradients), handed to the blocks as BlockInputs::prefixes (train/prompt_train.h builds them).
  const std::vector<AttentionPrefix>* prefixes = nullptr;
  // Called around every block's forward and backward (train/block_hooks.h: FSDP gathers, overlapped
  // gradient all-reduce); null: none.
  BlockHooks* block_hooks = nullptr;
};

// ids, labels: CPU I32 [B, T]. params null: loss only (no backward). The model runs where it lives: the
// CPU (F32) or CUDA (BF16 activations, F32 gradients; positions, seq_ids and ids are copied there), with
// dense or quantized Linears (quantized ones frozen); the LM head dense. inputs_embeds may be on either
// device. Bad ids/labels throw
// ErrorKind::Shape naming the position. Backward stops at the lowest block that has a trainable weight or
// an adapter when nothing below it (the embedding, d_inputs_embeds) needs a gradient.
LossSum causal_lm_forward_backward(const LlamaModel& model, const Tensor& ids, const Tensor& labels,
                                   TrainableParams* params, const StepOptions& opts = {});

}  // namespace qtune
