// The row offset of the activations a training Linear is running on. The Block may run its per-token
// layers (projections, norms, MLP) over chunks of the step's N token rows to bound activation memory at long
// sequence lengths (train/block.h). The dropout masks of the training adapters are a function of an
// element's place in the whole [N, I] activation; with the offset a chunk [r0, r0 + n) gets exactly the
// rows of the whole step's mask, so a chunked step computes what an unchunked one does.
//
//   { RowOffsetScope at(r0); lin.forward(out_rows, x_rows); }   // adapters see activation_row_offset() == r0
#pragma once
#include <cstdint>

namespace qtune {

// The first row of the activation being processed within the step's [N, ...] tensor (0 outside a scope).
int64_t activation_row_offset();

// Sets the offset for its lifetime (restores the previous value after).
class RowOffsetScope {
 public:
  explicit RowOffsetScope(int64_t r0);
  ~RowOffsetScope();
  RowOffsetScope(const RowOffsetScope&) = delete;
  RowOffsetScope& operator=(const RowOffsetScope&) = delete;

 private:
  int64_t prev_;
};

}  // namespace qtune
