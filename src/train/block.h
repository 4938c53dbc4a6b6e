// One Llama decoder layer for training: a forward that saves what its backward needs, and the backward.
//
//   x_mid = x + o_proj(attn(rope(q_proj(h1)), rope(k_proj(h1)), v_proj(h1))),  h1 = rmsnorm(x)
//   out   = x_mid + down(silu(gate(h2)) · up(h2)),                              h2 = rmsnorm(x_mid)
//
// Runs where the layer's weights are: on the CPU everything is F32; on CUDA activations are BF16 (x, the
// saved tensors), the gradient dx of backward F32.
// Saved activations (BlockSaved): the block input always; unless gradient checkpointing, also h1, the
// rotated q and k, v, the attention output and its log-sum-exp, x_mid, h2, gate, up and silu·up.
// With checkpointing only the input is kept and backward first recomputes the forward; long sequences then
// run the per-token layers in chunks of rows (BlockInputs::chunk_rows), with the same result. Backward turns
// d(out) into d(input) and accumulates gradients into the TrainableParams entries that exist for this
// layer's weights (looked up once by HF name: model.layers.<i>.self_attn.q_proj.weight ...); weights with
// no entry are frozen and only pass the gradient through (dense, NF4/FP4 or int8: train/linear_backward.h).
// Linears carrying a TrainableAdapter (LoRA ...) backpropagate through it too, and so does a layer's
// attention add-on (LlamaLayer::attn_adapter, the LLaMA-Adapter) when it implements
// TrainableAttentionAdapter below; one that does not runs in forward-only (loss) passes.
//
//   BlockInputs in{B, T, positions, inv_freq};
//   Block blk(model.config(), model.layers()[i], i, &params);
//   BlockSaved s;
//   blk.forward(x, in, s, /*checkpoint=*/true);   // x [N, C] in → out
//   ... blk.backward(dx, in, s);                  // dx [N, C] d(out) → d(in)
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/hf_config.h"
#include "model/llama_model.h"
#include "ops/attention.h"
#include "train/trainable.h"

namespace qtune {

// What every block of one step shares. positions I32 [B·T] (restart per packed example); inv_freq F32
// [D/2]; seq_ids I32 [B, T] or null (packed examples: attention stays inside equal-id runs).
struct BlockInputs {
  int64_t B = 0, T = 0;
  Tensor positions;
  Tensor inv_freq;
  const Tensor* seq_ids = nullptr;
  // Prefix tuning: per layer, prefix key/value rows every query sees (attention_forward_train_prefix).
  const std::vector<AttentionPrefix>* prefixes = nullptr;
  // Token chunking (0: off). With gradient checkpointing and N > chunk_rows, the per-token layers run over
  // chunks of chunk_rows rows (block_chunked.cpp): only attention's q, k, v, output and its gradients span
  // all N rows, so activation memory beyond the saved inputs is ~70 KB per token instead of ~280 (8B shape).
  int64_t chunk_rows = 0;
  // With gradient checkpointing (unchunked): also keep each block's attention output and log-sum-exp
  // (N·Hq·D activations + N·Hq floats), so the recompute for the backward skips the attention forward.
  bool keep_attention = false;
};

// An attention add-on the training Block runs and backpropagates (train/adaption_train.h). Its output joins
// the attention output before o_proj: x_mid = x + o_proj(att) + o_proj(extra), computed as
// o_proj(att + extra) when o_proj has no bias. o_proj is then frozen and adapter-free, so
// d(extra) = d(att) = dy·W_o.
struct TrainableAttentionAdapter {
  virtual ~TrainableAttentionAdapter() = default;
  // q [B, T, Hq, D] (rotated) → extra [N, Hq·D] in q's dtype; saved receives what backward reads.
  virtual void forward_train(Tensor& extra, std::vector<Tensor>& saved, const Tensor& q,
                             const LlamaLayer& layer) const = 0;
  // d_extra [N, Hq·D] (q's dtype) → dq [B, T, Hq, D] += (before the RoPE backward), and the gradients of
  // the adapter's parameters registered in params (null: none).
  virtual void backward_train(Tensor& dq, const Tensor& d_extra, const Tensor& q,
                              const std::vector<Tensor>& saved, const LlamaLayer& layer,
                              TrainableParams* params) const = 0;
};

struct BlockSaved {
  Tensor x_in;                     // [N, C] block input (always kept)
  bool full = false;               // the rest is present
  bool chunked = false;            // the forward ran in token chunks; so will the recompute
  Tensor h1;                       // [N, C] input_layernorm(x_in)
  Tensor q, k, v;                  // [B, T, Hq, D], [B, T, Hkv, D] x2 (q, k after RoPE)
  Tensor att, lse;                 // [B, T, Hq, D], F32 [B, T, Hq]
  Tensor x_mid, h2;                // [N, C]
  Tensor gate, up, act;            // [N, F]
  std::vector<Tensor> attn_extra;  // the TrainableAttentionAdapter's saved tensors
  uint64_t pass = 0;               // the forward's pass, re-entered by the backward (train/pass_scope.h)
  void drop_activations();         // keeps x_in only
  void drop_all_but_attention();   // keeps x_in, att and lse (BlockInputs::keep_attention)
  int64_t activation_bytes() const;
};

class Block {
 public:
  // params may be null (everything frozen). The layer must outlive the Block.
  Block(const ModelConfig& cfg, const LlamaLayer& layer, int index, TrainableParams* params);

  // x [N, C] (F32 on the CPU, BF16 on CUDA): the block input; afterwards x is a new tensor holding the block
  // output, and saved holds the input tensor itself (not a copy) and, unless checkpoint, the activations
  // backward needs.
  void forward(Tensor& x, const BlockInputs& in, BlockSaved& saved, bool checkpoint) const;
  // dx F32 [N, C] on the layer's device: d(loss)/d(output) in, d(loss)/d(input) out. Recomputes the
  // activations first when saved holds only the input; drops them afterwards.
  void backward(Tensor& dx, const BlockInputs& in, BlockSaved& saved) const;

  int index() const { return index_; }
  // Whether backward accumulates any gradient here: a registered weight of this layer, or an adapter.
  bool has_trainable() const;

 private:
  // Fills s with every activation; out (null in the backward's recompute, which never reads it) gets the
  // block output.
  void run_forward(const Tensor& x_in, Tensor* out, const BlockInputs& in, BlockSaved& s) const;
  // The token-chunked path (block_chunked.cpp), for checkpointed blocks without an attention add-on.
  bool chunks(const BlockInputs& in) const;
  void attention_chunked(const Tensor& x_in, const BlockInputs& in, BlockSaved& s) const;
  void forward_chunked(const Tensor& x_in, Tensor& out, const BlockInputs& in, BlockSaved& s) const;
  void backward_chunked(Tensor& dx, const BlockInputs& in, BlockSaved& s) const;
  // dq, dk, dv (zeroed, then accumulated) from d(att) through the attention, prefix rows included.
  void attention_grads(const BlockInputs& in, const BlockSaved& s, const Tensor& d_att, Tensor& dq,
                       Tensor& dk, Tensor& dv) const;
  Tensor act(const Shape& s) const;                          // an uninitialised activation
  Tensor grad_zeros(const Shape& s, bool gemm_input) const;  // BF16 on CUDA when a GEMM reads it, else F32
  Tensor gemm_grad(const Tensor& d) const;                   // d in the activation dtype

  const LlamaLayer& L_;
  int index_;
  int64_t C_, F_, Hq_, Hkv_, D_;
  float eps_;
  TrainableParams* params_;                                // adapters look up their gradients here
  const TrainableAttentionAdapter* attn_train_ = nullptr;  // the layer's attn_adapter, when trainable
  Device dev_;                                             // where the layer's weights live
  DType adt_;                                              // activation dtype: F32 on the CPU, BF16 on CUDA
  // Gradients of this layer's parameters (null = frozen).
  Tensor *g_in_norm_ = nullptr, *g_post_norm_ = nullptr;
  struct LinearGrads {
    Tensor* w = nullptr;
    Tensor* b = nullptr;
  };
  LinearGrads g_q_, g_k_, g_v_, g_o_, g_gate_, g_up_, g_down_;
};

}  // namespace qtune
