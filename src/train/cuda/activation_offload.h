// Offloading the checkpointed block inputs of a training step to pinned host memory (--offload-activations):
// with gradient checkpointing each block keeps only its input [N, C] between the forward and the backward,
// 256 KB per token on an 8B model; at 48k tokens that is 12 GiB of GPU memory this moves to the host.
// Copies run on their own stream beside the compute stream:
//   forward   store(l, x_in) after block l's forward: device → host starts at once; the device tensor is
//             freed one store later, when the compute stream has waited for its copy (so the caching
//             allocator never hands out memory a copy is still reading);
//   backward  prefetch(l − 1) before block l's backward starts the host → device copy of the next input,
//             take(l − 1) makes the compute stream wait for it and returns it.
// Host buffers are kept for the next step (one per slot, reallocated when the size changes).
//
//   ActivationOffload off(L);
//   for l: block[l].forward(...); off.store(l, saved[l].x_in);   // saved[l].x_in now undefined
//   off.flush();
//   for l = L−1..0: if (l > 0) off.prefetch(l − 1); saved[l].x_in = off.take(l); block[l].backward(...);
#pragma once
#include <memory>

#include "core/tensor.h"

namespace qtune {

class ActivationOffload {
 public:
  explicit ActivationOffload(int slots);
  ~ActivationOffload();
  ActivationOffload(const ActivationOffload&) = delete;
  ActivationOffload& operator=(const ActivationOffload&) = delete;

  // Starts copying the GPU tensor t to the host and takes it (t becomes undefined).
  void store(int slot, Tensor& t);
  // Frees the device tensors of the stores whose copies the compute stream has now waited for.
  void flush();
  // Starts the copy of a stored slot back into a new device tensor (no-op if already started).
  void prefetch(int slot);
  // The slot's tensor on the GPU, ordered after its copy on the compute stream.
  Tensor take(int slot);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace qtune
