// CPU elementwise ops: residual add (F32) and conversion between F32, BF16 and F16.
#include <cstring>

#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

void add_inplace(Tensor& x, const Tensor& y) {
  int64_t n = x.numel();
  float* a = x.data<float>();
  const float* b = y.data<float>();
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (int64_t i = 0; i < n; i++) a[i] += b[i];
}

static float load(const void* p, DType t, int64_t i) {
  if (t == DType::F32) return ((const float*)p)[i];
  if (t == DType::BF16) return bf16_to_f32(((const uint16_t*)p)[i]);
  return f16_to_f32(((const uint16_t*)p)[i]);
}

void convert(Tensor& out, const Tensor& in) {
  int64_t n = in.numel();
  if (out.dtype() == in.dtype()) {
    if (out.raw() != in.raw()) std::memcpy(out.raw(), in.raw(), in.nbytes());
    return;
  }
  const void* src = in.raw();
  DType st = in.dtype(), dt = out.dtype();
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (int64_t i = 0; i < n; i++) {
    float f = load(src, st, i);
    if (dt == DType::F32)
      out.data<float>()[i] = f;
    else if (dt == DType::BF16)
      out.data<uint16_t>()[i] = f32_to_bf16(f);
    else
      out.data<uint16_t>()[i] = f32_to_f16(f);
  }
}

}  // namespace cpu
}  // namespace qtune
