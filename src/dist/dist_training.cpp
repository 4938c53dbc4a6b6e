// DistTraining (see dist_training.h).
#include "dist/dist_training.h"

#include "dist/data_parallel.h"
#include "dist/sharded_optimizer.h"

namespace qtune {

DistTraining::DistTraining(DistContext& ctx, LlamaModel& model, TrainableParams& params,
                           const std::vector<ParamRef>& refs, const DistTrainingOptions& o)
    : ctx_(ctx), opts_(o), world_(ctx.comm->world_size()), refs_(refs), opt_refs_(refs) {
  if (o.fsdp) fsdp_ = std::make_unique<FsdpShards>(model, *ctx.comm, &params);
  if (sharded_optimizer()) {
    owner_ = assign_owners(refs, world_);
    opt_refs_ = owned(refs, owner_, ctx.comm->rank());
  }
  if (world_ > 1 && o.overlap_grad_reduce)
    reducer_ = std::make_unique<OverlappedGradReducer>(*ctx.comm, refs, model.config().num_hidden_layers);
  if (fsdp_) chain_.hooks.push_back(fsdp_.get());  // gathers before, gradient buckets after
  if (reducer_) chain_.hooks.push_back(reducer_.get());
}

BlockHooks* DistTraining::hooks(bool last_micro_batch) {
  if (reducer_) reducer_->arm(last_micro_batch);
  return chain_.hooks.empty() ? nullptr : &chain_;
}

void DistTraining::reduce_grads() {
  if (world_ == 1) return;
  collectives_ = reducer_ ? reducer_->finish() : allreduce_grads(*ctx_.comm, refs_, ReduceOp::Sum);
}

void DistTraining::after_step() {
  if (sharded_optimizer()) broadcast_from_owners(*ctx_.comm, refs_, owner_);
}

void DistTraining::load_optimizer(Optimizer& opt, const std::string& path) {
  if (sharded_optimizer())
    load_owned_optimizer(opt, path);
  else
    opt.load(path);
}

std::function<void(const std::string&)> DistTraining::optimizer_writer(const Optimizer& opt) {
  if (!sharded_optimizer()) return [&opt](const std::string& path) { opt.save(path); };
  auto parts = std::make_shared<std::vector<std::string>>(gather_optimizer_parts(*ctx_.comm, opt));
  return [parts](const std::string& path) { write_merged_optimizer(*parts, path); };
}

void DistTraining::unshard() {
  if (fsdp_) fsdp_->unshard();
}

}  // namespace qtune
