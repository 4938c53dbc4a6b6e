// Greedy decoding on the GPU, for DecodeStep: the token is picked where the logits are, so a step moves 8
// bytes to the host instead of the vocabulary's logits. Internal to model/.
#pragma once
#ifdef QTUNE_HAVE_CUDA
#include <cstdint>
#include <memory>

#include "core/tensor.h"

namespace qtune {

// Queues on the ops stream: *key (device memory, 8 bytes) = the order key of the largest logit of
// `logits` (F32 on the GPU, at most 2^31 − 1 values), the one qtune::argmax picks
// (model/sampling.h): the first on ties, -0 equal to +0, and a NaN never larger than anything, except at
// index 0, where nothing is larger than it. argmax_key_index turns the key into that index.
void argmax_key_cuda(uint64_t* key, const Tensor& logits);
inline int32_t argmax_key_index(uint64_t key) {
  return (int32_t)(0xFFFFFFFFu - (uint32_t)key);
}

// argmax_key_cuda with its 8-byte key's device buffer and pinned host copy kept from call to call: pick()
// queues the scan, copies the key back, waits for the stream and returns the token.
class GreedyPicker {
 public:
  GreedyPicker();
  int32_t pick(const Tensor& logits);

 private:
  Tensor key_;                  // 8 bytes on the GPU
  std::shared_ptr<void> host_;  // 8 bytes, pinned
};

}  // namespace qtune
#endif  // QTUNE_HAVE_CUDA
