// bitsandbytes' CUDA quantization rules on the host (see bnb_cuda_rules.h).
#include "quant/bnb_cuda_rules.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "quant/float_io.h"
#include "quant/quant4.h"

namespace qtune {

using namespace quant_detail;

namespace {

// NF4 thresholds, ascending (bitsandbytes' dQuantizeNF4 decision tree): code = #{t : v > t}.
constexpr float kNf4Thresholds[15] = {-0.8480964004993439f,   -0.6106329262256622f,  -0.4599952697753906f,
                                      -0.33967943489551544f,  -0.23460740596055984f, -0.13791173323988914f,
                                      -0.045525018125772476f, 0.03979014977812767f,  0.1202552504837513f,
                                      0.2035212516784668f,    0.2920137718319893f,   0.3893125355243683f,
                                      0.5016634166240692f,    0.6427869200706482f,   0.8614784181118011f};
// FP4 magnitude thresholds, ascending (dQuantizeFP4), and the 3-bit code of each magnitude slot.
constexpr float kFp4Thresholds[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                     0.4166667f,  0.583333f,  0.8333333f};
constexpr uint8_t kFp4Magnitude[8] = {0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};

// Fast math's flush to zero: a subnormal becomes a zero of its sign.
float ftz(float v) {
  return std::fabs(v) < FLT_MIN ? std::copysign(0.0f, v) : v;
}

uint8_t nf4_code(float v) {
  uint8_t c = 0;
  for (float t : kNf4Thresholds) c += v > t;
  return c;
}

uint8_t fp4_code(float v) {
  const uint8_t sign = v < 0.0f ? 8 : 0;
  const float m = std::fabs(v);
  int slot = 0;
  for (float t : kFp4Thresholds) slot += m > t;
  return (uint8_t)(sign + kFp4Magnitude[slot]);
}

// dQuantize<0>: bitsandbytes' CUDA 8-bit search. Seven halving steps from entry 127 keep the last entries
// below (lower) and above (upper) x, bounded by -1 and 1 (by the end entries when a side never moved); then x
// goes to the final pivot or, past the midpoint between the pivot and that bracket, to the bracket.
uint8_t code8(const float* code, float x) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f, val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) return (uint8_t)(x > (upper + val) * 0.5f ? upper_pivot : pivot);
  return (uint8_t)(x < (lower + val) * 0.5f ? lower_pivot : pivot);
}

// The block's absmax as the CUDA kernel reduces it: fmaxf from -FLT_MAX over ftz(|x|) (NaN ignored), the
// zero padding of a partial block included.
template <class Io>
float block_absmax(const typename Io::T* xb, int64_t len, int64_t blocksize) {
  float a = len < blocksize ? 0.0f : -FLT_MAX;
  for (int64_t i = 0; i < len; i++) a = std::fmax(a, ftz(std::fabs(Io::load(xb[i]))));
  return a;
}

// Per block (in parallel): its absmax as the CUDA kernel reduces it, stored, then body(load, start, len, inv)
// with inv = bnb_cuda_reciprocal(absmax) and load(i) the i-th value as f32.
template <class Body>
void for_each_block(const void* x, DType dtype, int64_t n, int64_t blocksize, float* absmax, const char* what,
                    Body&& body) {
  with_float_io(dtype, what, [&](auto io) {
    using Io = decltype(io);
    const auto* xs = static_cast<const typename Io::T*>(x);
    auto load = [xs](int64_t i) { return Io::load(xs[i]); };
    const int64_t nb = (n + blocksize - 1) / blocksize;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
      const int64_t start = b * blocksize, len = std::min(n, start + blocksize) - start;
      const float a = block_absmax<Io>(xs + start, len, blocksize);
      absmax[b] = a;
      body(load, start, len, bnb_cuda_reciprocal(a));
    }
  });
}

}  // namespace

uint8_t bnb_cuda_code4(QuantType qt, float v) {
  return qt == QuantType::NF4 ? nf4_code(v) : fp4_code(v);
}
uint8_t bnb_cuda_code8(const float* code, float v) {
  return code8(code, v);
}
float bnb_cuda_scaled(float x, float inv) {
  return ftz(ftz(x) * inv);
}
float bnb_cuda_reciprocal(float absmax) {
  return ftz(1.0f / absmax);
}

void quantize_4bit_cuda_rules_raw(const void* x, DType dtype, int64_t n, int64_t blocksize, QuantType qt,
                                  uint8_t* packed, float* absmax) {
  check_blocksize(blocksize, "quantize_4bit");
  for_each_block(
      x, dtype, n, blocksize, absmax, "quantize_4bit", [&](auto load, int64_t start, int64_t len, float inv) {
        for (int64_t i = 0; i < len; i += 2) {
          const float v0 = bnb_cuda_scaled(load(start + i), inv);
          const float v1 = bnb_cuda_scaled(i + 1 < len ? load(start + i + 1) : 0.0f, inv);  // padding: 0
          packed[(start + i) / 2] = (uint8_t)(bnb_cuda_code4(qt, v0) << 4 | bnb_cuda_code4(qt, v1));
        }
      });
}

void quantize_8bit_cuda_rules_raw(const void* x, DType dtype, int64_t n, const float* code, int64_t blocksize,
                                  uint8_t* q, float* absmax) {
  check_blocksize(blocksize, "quantize_blockwise_8bit");
  for_each_block(x, dtype, n, blocksize, absmax, "quantize_blockwise_8bit",
                 [&](auto load, int64_t start, int64_t len, float inv) {
                   for (int64_t i = 0; i < len; i++)
                     q[start + i] = code8(code, bnb_cuda_scaled(load(start + i), inv));
                 });
}

}  // namespace qtune
