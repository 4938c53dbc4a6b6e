// What the trainer (train/trainer.cpp) does differently across ranks, in one object: the gradient
// all-reduce (after the backward, or overlapped with it: dist/grad_overlap.h), and with --fsdp the sharded
// base weights (dist/fsdp.h) and optimizer states (dist/sharded_optimizer.h). One rank without --fsdp:
// everything here is a no-op.
//
//   DistTraining dt(*ctx, model, params, refs, {fsdp, overlap});
//   Optimizer opt(cfg, group_by_weight_decay(dt.optimizer_refs(), wd));
//   for each micro-batch g: so.block_hooks = dt.hooks(g == last); causal_lm_forward_backward(...);
//   dt.reduce_grads();  clip over all refs;  opt.step(lr);  dt.after_step();
//   checkpoint: auto w = dt.optimizer_writer(opt);  (every rank)  rank 0: save_checkpoint(out, peft, w, st)
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/fsdp.h"
#include "dist/grad_overlap.h"
#include "optim/optimizer.h"
#include "train/block_hooks.h"

namespace qtune {

struct DistTrainingOptions {
  bool fsdp = false;                // shard the base weights and the optimizer states
  bool overlap_grad_reduce = true;  // all-reduce each block's gradients as its backward ends
};

class DistTraining {
 public:
  DistTraining(DistContext& ctx, LlamaModel& model, TrainableParams& params,
               const std::vector<ParamRef>& refs, const DistTrainingOptions& o);

  // The parameters this rank's optimizer steps: its own under --fsdp, else all.
  const std::vector<ParamRef>& optimizer_refs() const { return opt_refs_; }
  bool sharded_optimizer() const { return opts_.fsdp && world_ > 1; }
  // The hooks of a training micro-batch (last: the step's last one) or an evaluation pass; may be null.
  BlockHooks* hooks(bool last_micro_batch);
  BlockHooks* eval_hooks() { return fsdp_.get(); }
  // After the step's micro-batches: every gradient summed over the ranks.
  void reduce_grads();
  // After the optimizer step: every parameter holds its owner's new value.
  void after_step();
  // Resume: this rank's optimizer states from a checkpoint's optimizer.safetensors.
  void load_optimizer(Optimizer& opt, const std::string& path);
  // Checkpoint, called on every rank (collective when sharded): what rank 0 hands save_checkpoint.
  std::function<void(const std::string&)> optimizer_writer(const Optimizer& opt);
  // Generation after training: the model whole again (collective).
  void unshard();
  FsdpShards* fsdp() { return fsdp_.get(); }
  int last_collectives() const { return collectives_; }  // of the last reduce_grads

 private:
  DistContext& ctx_;
  DistTrainingOptions opts_;
  int world_;
  std::vector<ParamRef> refs_, opt_refs_;
  std::vector<int> owner_;
  std::unique_ptr<FsdpShards> fsdp_;
  std::unique_ptr<OverlappedGradReducer> reducer_;
  BlockHookChain chain_;
  int collectives_ = 0;
};

}  // namespace qtune
