// FSDP-style sharding of the frozen base weights (`qtune finetune --fsdp`): each rank keeps 1/world of
// every decoder layer's base weights, and a layer's full weights exist only while its block runs.
//
// What is sharded, per layer: the weight storage of its seven Linears (q/k/v/o, gate/up/down) that no
// TrainableParams entry trains: NF4/FP4 (packed bytes, absmax, double-quant absmax and code, the
// dequantized absmax the CPU path keeps), LLM.int8 (int8 rows and their scales) or dense weights. Norms,
// biases, the embedding and the LM head stay on every rank (small, or needed outside the blocks).
// A layer's tensors are laid out in one byte buffer (each 256-byte aligned), padded to world · S bytes;
// rank r keeps bytes [r·S, (r+1)·S) (its shard, U8 [S]).
//
// Two gather buffers (slots) of max_l world · S_l bytes are all the full weights that exist: layer l's
// Linears permanently point into slot l % 2 (Tensor views at fixed offsets; the Quant4Linear/Int8Linear
// objects are rebuilt once around the views), so "materialising" layer l is one all-gather of the
// shards into that slot and "releasing" it is letting the next gather overwrite it. The hooks (a
// BlockHooks, StepOptions::block_hooks) gather a block just before it runs and start the gather of the
// next block the pass runs (forward l+1, backward l−1) into the other slot while it computes; a slot that
// already holds the wanted layer is not gathered again (the last two blocks of a forward serve the first
// two of the backward). On NCCL the prefetch runs on the communicator's side stream (start_all_gather),
// waited for before the block; on the CPU it is synchronous.
//
//   FsdpShards fsdp(model, *ctx->comm, &params);   // after adapters are attached and params registered
//   StepOptions so;  so.block_hooks = &fsdp;
//   causal_lm_forward_backward(model, ids, labels, &params, so);
//
// Sharding happens after the model is loaded whole on each rank (then freed): the load itself still
// needs one full copy per rank (device_empty_cache afterwards returns it to the driver).
#pragma once
#include <cstdint>
#include <vector>

#include "dist/communicator.h"
#include "model/llama_model.h"
#include "train/block_hooks.h"
#include "train/trainable.h"

namespace qtune {

class FsdpShards : public BlockHooks {
 public:
  // The model must live on comm's device (no device map split). params: what trains (its Linear weights
  // are not sharded); may be null.
  FsdpShards(LlamaModel& model, Communicator& comm, const TrainableParams* params);

  void before_block(int layer, int next, bool backward) override;
  void after_block(int, bool) override {}

  // Gathers every layer into a buffer of its own and points the model at it: the model is whole again
  // (for generation after training); the hooks then do nothing. Collective: every rank calls it.
  void unshard();

  int64_t full_bytes() const { return full_bytes_; }    // the sharded weights' bytes, unsharded
  int64_t shard_bytes() const { return shard_bytes_; }  // this rank's resident shards (with padding)
  int64_t buffer_bytes() const;                         // the two gather slots
  int64_t gathers() const { return gathers_; }          // all-gathers issued so far

 private:
  struct Piece {  // one distinct tensor of a layer, at a byte offset of the layer's buffer
    int64_t offset = 0;
    Shape shape;
    DType dtype = DType::U8;
  };
  struct LayerPlan {
    std::vector<Piece> pieces;
    // Per Linear (q, k, v, o, gate, up, down) and field, the piece index or −1 (see field_tensors).
    std::vector<std::vector<int>> fields;
    int64_t shard = 0;  // S: bytes per rank
    Tensor local;       // U8 [S], this rank's bytes
  };
  void point_layer(int l, const Tensor& buffer);  // every sharded tensor of layer l → views of buffer
  void ensure(int l);                             // layer l complete in its slot
  void prefetch(int l);                           // start gathering layer l into its slot

  LlamaModel& model_;
  Communicator& comm_;
  Device dev_;
  std::vector<LayerPlan> plans_;
  Tensor slot_[2];              // U8 [max world · S]
  int held_[2] = {-1, -1};      // the layer each slot holds (or is receiving)
  int64_t ticket_[2] = {0, 0};  // > 0: the gather into the slot may still be running
  int64_t full_bytes_ = 0, shard_bytes_ = 0, gathers_ = 0;
  bool unsharded_ = false;
};

}  // namespace qtune
