// CPU embedding lookup: out[n, :] = table[ids[n], :], converting BF16/F16 rows to F32 when out is F32.
#include <cstring>

#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) {
  int64_t N = ids.numel(), C = table.size(1);
  const int32_t* id = ids.data<int32_t>();
  size_t row_bytes = dtype_nbytes(table.dtype(), C);
  const char* tab = (const char*)table.raw();
  bool copy = out.dtype() == table.dtype();
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinWork)
  for (int64_t n = 0; n < N; n++) {
    const char* src = tab + (size_t)id[n] * row_bytes;
    if (copy) {
      std::memcpy((char*)out.raw() + n * row_bytes, src, row_bytes);
      continue;
    }
    float* o = out.data<float>() + n * C;  // [C]
    const uint16_t* h = (const uint16_t*)src;
    if (table.dtype() == DType::BF16)
      for (int64_t c = 0; c < C; c++) o[c] = bf16_to_f32(h[c]);
    else
      for (int64_t c = 0; c < C; c++) o[c] = f16_to_f32(h[c]);
  }
}

}  // namespace cpu
}  // namespace qtune
