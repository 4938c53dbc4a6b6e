// PagedStates: the engine of the paged optimizers (paged_adamw_32bit, paged_adamw_8bit, paged_lion_8bit).
// Optimizer states live in pinned host memory; each step streams them through a small double-buffered
// device staging area, so the device memory a paged optimizer holds is 2 slots × slot_bytes, whatever the
// parameter count. No managed memory is used.
//
// A step is a list of jobs (one per parameter), packed into batches that fill one slot: whole jobs while
// they fit, and pieces (element ranges of whole state blocks) of a job too large for the room left. Batch
// i uses slot s = i % 2 and three streams:
//   h2d   side stream (non-blocking): wait until slot s is free (copy-out of batch i-2 done),
//         copy the batch's host states in, record in[s]
//   main  the legacy default stream, where the caller's kernels run: wait in[s], run the updates of the
//         batch (the same kernels as the unpaged optimizer, on the staged states), record done[s]
//   d2h   second side stream (the other copy engine): wait done[s], copy the states back, record out[s]
// so batch i+1 copies in while batch i updates and batch i-1 copies out.
//
// Copies per batch, not per tensor: the states of many parameters can share one pinned arena
// (pinned_state_arena), parameter after parameter, each parameter's arrays inside its own region. A whole
// job from an arena is staged as its region's bytes at the same relative offsets, and regions adjacent in
// the arena are staged adjacent in the slot, so a batch of consecutive parameters moves in one copy each
// way. Jobs outside an arena, and pieces, move array by array.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "optim/cpu/optim_kernels.h"

namespace qtune {

// Zero-filled CPU tensor in page-locked host memory (freed with cudaFreeHost).
Tensor pinned_host_zeros(const Shape& shape, DType dtype);

// The states one parameter keeps: F32 state1 (and state2), or U8 codes + F32 absmax per blocksize values.
struct PagedStateSpec {
  Shape shape;
  bool quantized = false;
  bool two_states = true;  // false: state1 only (Lion)
  int64_t blocksize = 256;
};

// One parameter's zero-filled host states inside an arena; region_bytes: the size of its region.
struct PagedHostStates {
  Tensor state[2];   // [shape] F32 or U8; state[1] undefined for one-state kinds
  Tensor absmax[2];  // F32 [ceil(numel / blocksize)], quantized only
  int64_t region_bytes = 0;
  const void* arena = nullptr;  // the allocation (the same for every parameter of one call)
};

// One page-locked allocation holding the states of every spec, in order. Region of a parameter: state1,
// state2, absmax1, absmax2 (those it has), each at a 256-byte boundary, the region a multiple of 256 bytes;
// the regions follow each other without gaps. The allocation lives while any of its tensors does.
std::vector<PagedHostStates> pinned_state_arena(const std::vector<PagedStateSpec>& specs);

// One parameter's update: device param and grad, host (pinned) states.
struct PagedJob {
  float* p = nullptr;        // device [n]
  const float* g = nullptr;  // device [n]
  int64_t n = 0;
  bool quantized = false;  // true: U8 codes + F32 absmax per `blocksize` values; false: F32 states
  int64_t blocksize = 256;
  Tensor state[2];   // pinned host [n] (F32 or U8); state[1] undefined for one-state kinds (Lion)
  Tensor absmax[2];  // pinned host F32 [ceil(n / blocksize)], quantized only
  // > 0: the states come from pinned_state_arena, in a region of this many bytes starting at state[0]
  // (padding included, nothing else in it), so the region may be copied whole, and with the adjacent
  // regions of the same arena (a copy never spans two allocations: cudaMemcpyAsync refuses that).
  int64_t region_bytes = 0;
  const void* arena = nullptr;
  AdamHyper h;
};

// Device pointers to one piece's states in a staging slot (element 0 = the piece's first element).
struct StagedStates {
  void* state[2] = {nullptr, nullptr};
  float* absmax[2] = {nullptr, nullptr};
};

// Elements [off, off + len) of *job, staged at st.
struct PagedPiece {
  const PagedJob* job;
  int64_t off, len;
  StagedStates st;
};

// Updates every piece of one batch from its staged states, on the default stream.
using PagedUpdate = std::function<void(const std::vector<PagedPiece>& batch)>;

class PagedStates {
 public:
  explicit PagedStates(int64_t slot_bytes);  // at least 64 KiB
  ~PagedStates();                            // waits for the copies in flight
  PagedStates(const PagedStates&) = delete;
  PagedStates& operator=(const PagedStates&) = delete;

  // Enqueues one step over the jobs (asynchronous; keeps the jobs' host tensors alive until the next
  // step or wait()).
  void step(std::vector<PagedJob> jobs, const PagedUpdate& update);
  // Blocks until the host states of the last step are written back.
  void wait();
  // Device bytes held for staging (0 before the first step).
  int64_t device_bytes() const;
  // Host <-> device copies the last step issued, each way (for tests and benchmarks).
  int64_t copies_per_direction() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qtune
