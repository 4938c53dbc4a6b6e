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

// Fast math's flush to zero: a subnormal becomes a zero of its sign.
float ftz(float v) {
  return std::fabs(v) < FLT_MIN ? std::copysign(0.0f, v) : v;
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
                     q[start + i] = bnb_cuda_code8(code, bnb_cuda_scaled(load(start + i), inv));
                 });
}

}  // namespace qtune
