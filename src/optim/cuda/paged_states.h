// PagedStates: the engine of the paged optimizers (paged_adamw_32bit, paged_adamw_8bit, paged_lion_8bit).
// Optimizer states live in pinned host memory; each step streams them through a small double-buffered
// device staging area, so the device memory a paged optimizer holds is 2 slots × slot_bytes, whatever the
// parameter count. No managed memory is used.
//
// A step is a list of jobs (one per parameter), cut into pieces (element ranges of whole state blocks)
// packed into batches that fill one slot. Batch i uses slot s = i % 2 and three streams:
//   h2d   side stream (non-blocking): wait until slot s is free (copy-out of batch i-2 done),
//         copy the batch's host states in, record in[s]
//   main  the legacy default stream, where the caller's kernels run: wait in[s], run the update (the same
//         kernel as the unpaged optimizer, on the staged states), record done[s]
//   d2h   second side stream (the other copy engine): wait done[s], copy the states back, record out[s]
// so batch i+1 copies in while batch i updates and batch i-1 copies out. At the end the main stream waits
// for the last copy-out (later work on it sees final states); wait() blocks the host until then.
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

// One parameter's update: device param and grad, host (pinned) states.
struct PagedJob {
  float* p = nullptr;        // device [n]
  const float* g = nullptr;  // device [n]
  int64_t n = 0;
  bool quantized = false;  // true: U8 codes + F32 absmax per `blocksize` values; false: F32 states
  int64_t blocksize = 256;
  Tensor state[2];   // pinned host [n] (F32 or U8); state[1] undefined for one-state kinds (Lion)
  Tensor absmax[2];  // pinned host F32 [ceil(n / blocksize)], quantized only
  AdamHyper h;
};

// Device pointers to one piece's states in a staging slot (element 0 = the piece's first element).
struct StagedStates {
  void* state[2] = {nullptr, nullptr};
  float* absmax[2] = {nullptr, nullptr};
};

// Updates elements [off, off + len) of job j from the staged states st, on the default stream.
using PagedUpdate = std::function<void(const PagedJob& j, int64_t off, int64_t len, const StagedStates& st)>;

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

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qtune
