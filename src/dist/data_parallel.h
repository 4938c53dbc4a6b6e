// Data parallelism for the trainer: after the backward of a step, the gradients of the trainable
// parameters are all-reduced across ranks in buckets (~25 MB: several tensors packed into one flat F32
// buffer per collective, then copied back), so every rank steps its optimizer on the same gradient.
//
// Loss normalisation. The trainer scales each token loss by 1 / (targets of the whole step), so a step's
// gradient is Σ_tokens ∂loss / Σ targets. With N ranks the step's targets are spread over them: each
// rank first all-reduces its local target count (all_reduce_scalar, Sum) and scales by 1 / global count;
// the gradients are then all-reduced with ReduceOp::Sum (not Avg): Σ_ranks Σ_local / global = the
// gradient one rank would get with N times the micro-batches (gradient accumulation N). ReduceOp::Avg is
// right only when each rank normalised by its own count and the counts are equal (fixed-size batches).
//
//   std::vector<ParamRef> refs = ...;                  // the optimizer's parameters
//   allreduce_grads(*ctx->comm, refs, ReduceOp::Sum);   // grads now equal on every rank
#pragma once
#include <cstdint>
#include <vector>

#include "dist/communicator.h"
#include "optim/optimizer.h"
#include "train/trainable.h"

namespace qtune {

constexpr int64_t kDefaultBucketBytes = 25ll << 20;

// Every grad must be F32 and on the communicator's device; the order of refs must be the same on all
// ranks (it is: registration order). Returns the number of collectives issued (buckets).
int allreduce_grads(Communicator& comm, const std::vector<ParamRef>& refs, ReduceOp op,
                    int64_t bucket_bytes = kDefaultBucketBytes);
int allreduce_grads(Communicator& comm, const TrainableParams& params, ReduceOp op,
                    int64_t bucket_bytes = kDefaultBucketBytes);

}  // namespace qtune
