// Element access for the float types quantization reads and writes (F32, BF16, F16), as small traits so
// the per-element loops are templates (vectorisable) instead of a switch per element. Internal to quant/.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "core/error.h"

namespace qtune {
namespace quant_detail {

struct F32Io {
  using T = float;
  static float load(T v) { return v; }
  static T store(float f) { return f; }
};
struct BF16Io {
  using T = uint16_t;
  static float load(T v) { return bf16_to_f32(v); }
  static T store(float f) { return f32_to_bf16(f); }  // round to nearest even
};
struct F16Io {
  using T = uint16_t;
  static float load(T v) { return f16_to_f32(v); }
  static T store(float f) { return f32_to_f16(f); }  // round to nearest even
};

// Calls f(Io{}) for the traits of dtype; other dtypes are a Usage error naming `what`.
template <class F>
void with_float_io(DType dt, const char* what, F&& f) {
  switch (dt) {
    case DType::F32:
      f(F32Io{});
      return;
    case DType::BF16:
      f(BF16Io{});
      return;
    case DType::F16:
      f(F16Io{});
      return;
    default:
      throw_error(ErrorKind::Usage, what, ": dtype ", dtype_name(dt), " is not supported (F32, BF16 or F16)");
  }
}

}  // namespace quant_detail
}  // namespace qtune
