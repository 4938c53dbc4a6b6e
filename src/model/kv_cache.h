// The attention KV cache: per layer, K and V tensors [B, Smax, Hkv, D] preallocated for the whole
// generation, in the model's activation dtype on its device (per layer for a model split by a device map).
// Rows [0, len) of each batch are valid; the forward writes the new tokens' rows at start_pos and attends
// over rows [0, start_pos + T). (A prefix, as prefix tuning adds, would occupy the first rows.)
#pragma once
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace qtune {

class KVCache {
 public:
  KVCache() = default;
  KVCache(int layers, int64_t batch, int64_t max_seq, int64_t kv_heads, int64_t head_dim, DType dtype,
          Device device);
  // One (dtype, device) per layer: a model split between the CPU and the GPU (device_map.h) keeps each
  // layer's cache beside its weights, in that layer's activation dtype.
  KVCache(const std::vector<std::pair<DType, Device>>& per_layer, int64_t batch, int64_t max_seq,
          int64_t kv_heads, int64_t head_dim);

  int layers() const { return (int)k_.size(); }
  int64_t batch() const { return batch_; }
  int64_t max_seq() const { return max_seq_; }
  const Tensor& k(int layer) const { return k_[layer]; }  // [B, Smax, Hkv, D]
  const Tensor& v(int layer) const { return v_[layer]; }
  size_t nbytes() const;

  // For batch 1, the cache rows [start_pos, start_pos + T) of a layer as writable views [T, Hkv·D], so the
  // K/V projections can write straight into the cache (no copy); undefined tensors when batch > 1.
  Tensor k_rows(int layer, int64_t start_pos, int64_t T) const;
  Tensor v_rows(int layer, int64_t start_pos, int64_t T) const;

  // Copies k_new, v_new [B·T, Hkv·D] (token rows, batch-major) into rows [start_pos, start_pos + T).
  void write(int layer, const Tensor& k_new, const Tensor& v_new, int64_t start_pos, int64_t T);

 private:
  int64_t batch_ = 0, max_seq_ = 0;
  std::vector<Tensor> k_, v_;
};

}  // namespace qtune
