// KV cache storage and row writes (see kv_cache.h). Writes are plain copies, so they work on any device.
#include "model/kv_cache.h"

#include "core/error.h"

namespace qtune {

KVCache::KVCache(int layers, int64_t batch, int64_t max_seq, int64_t kv_heads, int64_t head_dim, DType dtype,
                 Device device)
    : batch_(batch), max_seq_(max_seq) {
  for (int l = 0; l < layers; l++) {
    k_.push_back(Tensor::empty({batch, max_seq, kv_heads, head_dim}, dtype, device));
    v_.push_back(Tensor::empty({batch, max_seq, kv_heads, head_dim}, dtype, device));
  }
}

KVCache::KVCache(const std::vector<std::pair<DType, Device>>& per_layer, int64_t batch, int64_t max_seq,
                 int64_t kv_heads, int64_t head_dim)
    : batch_(batch), max_seq_(max_seq) {
  for (const auto& [dtype, device] : per_layer) {
    k_.push_back(Tensor::empty({batch, max_seq, kv_heads, head_dim}, dtype, device));
    v_.push_back(Tensor::empty({batch, max_seq, kv_heads, head_dim}, dtype, device));
  }
}

size_t KVCache::nbytes() const {
  size_t n = 0;
  for (size_t l = 0; l < k_.size(); l++) n += k_[l].nbytes() + v_[l].nbytes();
  return n;
}

static Tensor rows_view(const Tensor& cache, int64_t max_seq, int64_t start_pos, int64_t T) {
  if (start_pos < 0 || start_pos + T > max_seq)
    throw_error(ErrorKind::Shape, "KV cache: tokens [", start_pos, ", ", start_pos + T,
                ") do not fit in the cache of ", max_seq, " positions");
  return cache.reshape({max_seq, -1}).slice0(start_pos, T);  // [T, Hkv·D]
}

Tensor KVCache::k_rows(int layer, int64_t start_pos, int64_t T) const {
  QT_CHECK(layer >= 0 && layer < layers());
  return batch_ == 1 ? rows_view(k_[layer], max_seq_, start_pos, T) : Tensor();
}

Tensor KVCache::v_rows(int layer, int64_t start_pos, int64_t T) const {
  QT_CHECK(layer >= 0 && layer < layers());
  return batch_ == 1 ? rows_view(v_[layer], max_seq_, start_pos, T) : Tensor();
}

void KVCache::write(int layer, const Tensor& k_new, const Tensor& v_new, int64_t start_pos, int64_t T) {
  QT_CHECK(layer >= 0 && layer < layers());
  if (start_pos < 0 || start_pos + T > max_seq_)
    throw_error(ErrorKind::Shape, "KV cache: tokens [", start_pos, ", ", start_pos + T,
                ") do not fit in the cache of ", max_seq_, " positions");
  int64_t row = k_[layer].numel() / (batch_ * max_seq_);  // Hkv·D
  if (k_new.numel() != batch_ * T * row || v_new.numel() != k_new.numel())
    throw_error(ErrorKind::Shape, "KV cache: new rows ", k_new.describe(), " / ", v_new.describe(),
                " do not match ", batch_, " x ", T, " x ", row);
  for (int64_t b = 0; b < batch_; b++) {
    Tensor kd = k_[layer].slice0(b, 1).reshape({max_seq_, row}).slice0(start_pos, T);  // [T, Hkv·D]
    Tensor vd = v_[layer].slice0(b, 1).reshape({max_seq_, row}).slice0(start_pos, T);
    kd.copy_from(k_new.reshape({batch_ * T, row}).slice0(b * T, T));
    vd.copy_from(v_new.reshape({batch_ * T, row}).slice0(b * T, T));
  }
}

}  // namespace qtune
