// Element types and conversions. Names follow safetensors ("F32", "BF16", ...). Q4 is packed 4-bit:
// two values per byte; bitsandbytes stores such tensors as U8 in files, so Q4 never appears in a file.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace qtune {

enum class DType { F32, F16, BF16, I8, U8, I32, I64, Q4, F64, BOOL };

// Size of one element in bits (4 for Q4).
int dtype_bits(DType t);
// Bytes needed for n elements (rounded up for Q4).
inline size_t dtype_nbytes(DType t, int64_t n) { return (size_t)((n * dtype_bits(t) + 7) / 8); }
const char* dtype_name(DType t);
// Parses a safetensors dtype name; returns false when unknown.
bool dtype_from_name(const std::string& name, DType* out);

// bf16: the top 16 bits of an f32, rounded to nearest even (NaN kept quiet).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// IEEE half, round to nearest even, with subnormals, inf and NaN.
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

}  // namespace qtune
