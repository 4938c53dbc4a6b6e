// The identity of one pass of a Block's per-token layers. A training adapter may keep a small product of its
// forward (LoRA's mid = (m ⊙ x)·Aᵀ, [N, r]) for the backward of the same block, or compute the products of
// several Linears that read one input in one launch before their forwards run (train/lora_train.h). Such a
// value is valid only inside the pass that made it: Block::forward opens a PassScope for its forward, and
// Block::backward one (for_backward) around the recompute and the backward, so the backward finds the values
// of its own recompute and never those of another block, step or evaluation pass. An unchunked training
// block's forward and its backward share one pass (BlockSaved::pass): the recompute reproduces the forward's
// inputs exactly, so the forward's values serve both. Ids increase monotonically over the process (never
// reused, whatever the allocator does with addresses).
//
//   { PassScope pass(true); run_forward(...); ... linear_backward(...); }   // pass_id() unique inside
//   { PassScope again(true, saved_id); ... }                                 // re-enters pass saved_id
#pragma once
#include <cstdint>

namespace qtune {

// The current pass (0 outside any scope: adapters keep nothing).
uint64_t pass_id();
// Whether the current pass is a backward's (its forward values will be read again by the backward).
bool pass_for_backward();

class PassScope {
 public:
  explicit PassScope(bool for_backward);
  PassScope(bool for_backward, uint64_t id);  // re-enters pass id (a fresh one when id is 0)
  uint64_t id() const { return id_; }
  ~PassScope();
  PassScope(const PassScope&) = delete;
  PassScope& operator=(const PassScope&) = delete;

 private:
  uint64_t id_, prev_id_;
  bool prev_backward_;
};

}  // namespace qtune
