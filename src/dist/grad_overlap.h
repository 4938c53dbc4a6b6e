// The data-parallel gradient all-reduce overlapped with the backward pass: on the last micro-batch of a
// step, as soon as block l's backward is done its trainable gradients are final, so their buckets are
// all-reduced then (NCCL: queued on the communicator's side stream, start_all_reduce) while the blocks
// below still compute. finish() waits for them, copies the buckets back, and reduces what no block owns
// (embedding, LM head, final norm, prompt embeddings ...) with allreduce_grads. Sums are the same as
// allreduce_grads' (ReduceOp::Sum over the same values), so losses do not depend on the overlap.
//
// A parameter belongs to block i when its name contains "layers.<i>." (model.layers.3.self_attn.q_proj
// .lora_A.weight ...): every such gradient is written by block i's backward only.
//
//   OverlappedGradReducer red(*ctx->comm, refs, num_layers);
//   so.block_hooks = &red;
//   for each micro-batch g: red.arm(g == last); causal_lm_forward_backward(..., so);
//   red.finish();                                       // every gradient summed over the ranks
#pragma once
#include <cstdint>
#include <vector>

#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "optim/optimizer.h"
#include "train/block_hooks.h"

namespace qtune {

// The block a parameter name belongs to ("...layers.<i>...."), or −1.
int layer_of_param(const std::string& name);

class OverlappedGradReducer : public BlockHooks {
 public:
  // refs: the trainable parameters in the same order on every rank (grads F32 on comm's device).
  OverlappedGradReducer(Communicator& comm, const std::vector<ParamRef>& refs, int num_layers,
                        int64_t bucket_bytes = kDefaultBucketBytes);

  void arm(bool on) { armed_ = on; }  // on for the last micro-batch of a step
  void before_block(int, int, bool) override {}
  void after_block(int layer, bool backward) override;  // armed and backward: start the block's buckets
  // Waits for the started all-reduces and reduces the rest; disarms. Returns the collectives of the step.
  int finish();
  int started() const { return started_; }  // collectives started from the hooks in this step

 private:
  struct Bucket {
    std::vector<ParamRef> refs;
    Tensor flat;  // F32 [Σ numel], made on first use; undefined for a lone large tensor (in place)
  };
  Communicator& comm_;
  int64_t bucket_bytes_;
  std::vector<std::vector<Bucket>> layer_buckets_;  // per block
  std::vector<char> done_;                          // per block: started this step
  std::vector<ParamRef> rest_;                      // no block's
  bool armed_ = false;
  int started_ = 0;
  int64_t last_ticket_ = 0;
};

}  // namespace qtune
