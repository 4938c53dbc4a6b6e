// SFT batching (see collate.h).
#include "train/collate.h"

#include <algorithm>

#include "core/error.h"

namespace qtune {

std::vector<std::vector<int64_t>> make_rows(const std::vector<SftExample>& examples,
                                            const std::vector<int64_t>& order, bool packing,
                                            int64_t max_len) {
  std::vector<std::vector<int64_t>> rows;
  int64_t used = 0;
  for (int64_t e : order) {
    const int64_t n = (int64_t)examples[e].ids.size();
    if (!packing || rows.empty() || used + n > max_len) {
      rows.push_back({e});
      used = n;
    } else {
      rows.back().push_back(e);
      used += n;
    }
  }
  return rows;
}

MicroBatch collate(const std::vector<SftExample>& examples, const std::vector<std::vector<int64_t>>& rows,
                   size_t first, size_t count, int32_t pad_id) {
  if (first + count > rows.size() || count == 0)
    throw_error(ErrorKind::Internal, "collate: rows out of range");
  int64_t T = 1;
  for (size_t r = first; r < first + count; ++r) {
    int64_t len = 0;
    for (int64_t e : rows[r]) len += (int64_t)examples[e].ids.size();
    T = std::max(T, len);
  }
  const int64_t B = (int64_t)count;
  std::vector<int32_t> ids(B * T, pad_id), labels(B * T, -100), pos(B * T, 0), seq(B * T, 0);
  MicroBatch mb;
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0, s = 0;
    for (int64_t e : rows[first + b]) {
      const SftExample& ex = examples[e];
      const int64_t n = (int64_t)ex.ids.size();
      for (int64_t i = 0; i < n; ++i, ++t) {
        ids[b * T + t] = ex.ids[i];
        labels[b * T + t] = i + 1 < n ? ex.labels[i + 1] : -100;
        pos[b * T + t] = (int32_t)i;
        seq[b * T + t] = (int32_t)s;
        mb.targets += labels[b * T + t] != -100;
      }
      mb.tokens += n;
      ++s;
    }
    for (int64_t i = 0; t < T; ++t, ++i) {  // padding: its own sequence, positions continuing from 0
      pos[b * T + t] = (int32_t)i;
      seq[b * T + t] = (int32_t)s;
    }
  }
  mb.ids = Tensor::from_i32(ids, {B, T});
  mb.labels = Tensor::from_i32(labels, {B, T});
  mb.positions = Tensor::from_i32(pos, {B * T});
  mb.seq_ids = Tensor::from_i32(seq, {B, T});
  return mb;
}

}  // namespace qtune
