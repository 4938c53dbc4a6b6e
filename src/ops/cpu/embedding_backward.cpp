// CPU embedding backward: dtable[ids[n], :] += dout[n, :]. Threads split the columns, so two rows with
// the same id never race and the sum order (n ascending) is fixed: deterministic.
#include <algorithm>

#include "ops/cpu/backward_ops.h"
#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

void embedding_backward(Tensor& dtable, const Tensor& ids, const Tensor& dout) {
  int64_t N = ids.numel(), C = dtable.size(1);
  const int32_t* id = ids.data<int32_t>();
  const float* g = dout.data<float>();  // [N, C]
  float* dt = dtable.data<float>();     // [V, C]
  int64_t nblocks = std::max<int64_t>(1, std::min<int64_t>(num_threads(), C / 16));
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinWork)
  for (int64_t blk = 0; blk < nblocks; blk++) {
    int64_t c0 = C * blk / nblocks, c1 = C * (blk + 1) / nblocks;
    for (int64_t n = 0; n < N; n++) {
      float* row = dt + (int64_t)id[n] * C;
      const float* gr = g + n * C;
      for (int64_t c = c0; c < c1; c++) row[c] += gr[c];
    }
  }
}

}  // namespace cpu
}  // namespace qtune
