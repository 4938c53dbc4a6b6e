// Calls around each decoder block of a training or evaluation pass (StepOptions::block_hooks in
// train/causal_lm.h), the seam distributed training plugs into without touching the block code:
// FSDP gathers a block's sharded base weights just before it runs and prefetches the next block's
// (dist/fsdp.h); the overlapped gradient all-reduce starts a block's buckets as soon as its backward is
// done (dist/grad_overlap.h). A pass calls, per block in the order the blocks run:
//   forward:  before_block(l, next, false) · forward · after_block(l, false)      l = 0 .. L−1
//   backward: before_block(l, next, true) · (recompute) backward · after_block(l, true)   l = L−1 .. stop
// next is the block the same pass runs after l (−1: none), for prefetching.
#pragma once
#include <vector>

namespace qtune {

struct BlockHooks {
  virtual ~BlockHooks() = default;
  virtual void before_block(int layer, int next, bool backward) = 0;
  virtual void after_block(int layer, bool backward) = 0;
};

// Several hooks as one, called in list order (before and after alike).
struct BlockHookChain : BlockHooks {
  std::vector<BlockHooks*> hooks;
  void before_block(int layer, int next, bool backward) override {
    for (BlockHooks* h : hooks) h->before_block(layer, next, backward);
  }
  void after_block(int layer, bool backward) override {
    for (BlockHooks* h : hooks) h->after_block(layer, backward);
  }
};

}  // namespace qtune
