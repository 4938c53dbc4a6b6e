// Batching of tokenized SFT examples into the model's [B, T] inputs.
//
// Rows: without packing one example per row; with packing consecutive examples (in the given order)
// share a row of at most max_len tokens (greedy first fit in order), each keeping its own position ids
// 0.. and its own sequence id, so attention never crosses an example boundary (causal_lm.h: seq_ids).
// Labels are shifted here (label[t] = the example's token t+1, −100 at each example's last token, at
// masked tokens and on padding), which is what causal_lm_forward_backward expects.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "train/dataset.h"

namespace qtune {

// Rows of example indices, in order.
std::vector<std::vector<int64_t>> make_rows(const std::vector<SftExample>& examples,
                                            const std::vector<int64_t>& order, bool packing, int64_t max_len);

struct MicroBatch {
  Tensor ids, labels;   // I32 [B, T]
  Tensor positions;     // I32 [B·T]
  Tensor seq_ids;       // I32 [B, T]
  int64_t tokens = 0;   // non-padding tokens
  int64_t targets = 0;  // labels that are not −100
};

// rows [first, first + count) of `rows`, padded with pad_id to the longest.
MicroBatch collate(const std::vector<SftExample>& examples, const std::vector<std::vector<int64_t>>& rows,
                   size_t first, size_t count, int32_t pad_id);

}  // namespace qtune
