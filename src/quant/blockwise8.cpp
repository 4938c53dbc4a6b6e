// 8-bit blockwise quantize / dequantize (see blockwise8.h for the exact rules). Blocks are independent, so
// they are spread over OpenMP threads; the result does not depend on the thread count.
#include "quant/blockwise8.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "quant/codebook.h"
#include "quant/float_io.h"

namespace qtune {

using namespace quant_detail;

namespace {
constexpr int kLutSize = 65536;

template <class Io>
void quantize_blocks(const typename Io::T* x, int64_t n, const Quant8Lut& lut, int64_t blocksize, uint8_t* q,
                     float* absmax) {
  const int64_t nb = (n + blocksize - 1) / blocksize;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t start = b * blocksize, end = std::min(n, start + blocksize);
    float a = 0.0f;
    for (int64_t i = start; i < end; i++) a = std::max(a, std::fabs(Io::load(x[i])));  // NaN ignored
    absmax[b] = a;
    if (a == 0.0f) {
      std::fill(q + start, q + end, (uint8_t)0);
      continue;
    }
    const float inv = 1.0f / a;
    for (int64_t i = start; i < end; i++) q[i] = lut.lookup(Io::load(x[i]) * inv);
  }
}

template <class Io>
void dequantize_blocks(const uint8_t* q, const float* absmax, const float* code, int64_t n, int64_t blocksize,
                       typename Io::T* out) {
  const int64_t nb = (n + blocksize - 1) / blocksize;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t start = b * blocksize, end = std::min(n, start + blocksize);
    const float s = absmax[b];
    for (int64_t i = start; i < end; i++) out[i] = Io::store(code[q[i]] * s);
  }
}
}  // namespace

Quant8Lut::Quant8Lut(const std::vector<float>& code) : code_(code), lut_(kLutSize) {
  if (code.size() != 256)
    throw_error(ErrorKind::Usage, "8-bit code book: expected 256 values, got ", code.size());
  for (size_t j = 0; j + 1 < code.size(); j++)
    if (!(code[j] <= code[j + 1]))
      throw_error(ErrorKind::Usage, "8-bit code book: values must be sorted ascending (index ", j, ": ",
                  code[j], " > ", code[j + 1], ")");
  float mids[255];
  for (int j = 0; j < 255; j++) mids[j] = 0.5f * (code[j] + code[j + 1]);
  int idx = 0;
  for (int i = 0; i < kLutSize; i++) {
    // bin i stands for -1 + 2i / 65535; its code: the number of midpoints below it
    const float val = -1.0f + (2.0f * (float)i) / (float)(kLutSize - 1);
    while (idx < 255 && mids[idx] < val) idx++;
    lut_[i] = (uint8_t)idx;
  }
}

uint8_t Quant8Lut::lookup(float v) const {
  v = std::min(std::max(v, -1.0f), 1.0f);
  // separate f32 steps (no fused multiply-add: the library is built with -ffp-contract=off)
  float t = (v + 1.0f) * 0.5f;
  t = t * (float)(kLutSize - 1);
  t = t + 0.5f;
  return lut_[(uint16_t)t];
}

void quantize_blockwise_8bit_raw(const void* x, DType dtype, int64_t n, const Quant8Lut& lut,
                                 int64_t blocksize, uint8_t* q, float* absmax) {
  check_blocksize(blocksize, "quantize_blockwise_8bit");
  with_float_io(dtype, "quantize_blockwise_8bit", [&](auto io) {
    using Io = decltype(io);
    quantize_blocks<Io>(static_cast<const typename Io::T*>(x), n, lut, blocksize, q, absmax);
  });
}

void dequantize_blockwise_8bit_raw(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                                   int64_t blocksize, DType out_dtype, void* out) {
  check_blocksize(blocksize, "dequantize_blockwise_8bit");
  with_float_io(out_dtype, "dequantize_blockwise_8bit", [&](auto io) {
    using Io = decltype(io);
    dequantize_blocks<Io>(q, absmax, code, n, blocksize, static_cast<typename Io::T*>(out));
  });
}

Blockwise8 quantize_blockwise_8bit(const Tensor& x, const Quant8Lut& lut, int64_t blocksize) {
  if (!x.defined() || x.is_cuda())
    throw_error(ErrorKind::Usage, "quantize_blockwise_8bit: expected a CPU tensor, got ",
                x.defined() ? x.describe() : std::string("an undefined tensor"));
  check_blocksize(blocksize, "quantize_blockwise_8bit");
  const int64_t n = x.numel();
  Blockwise8 r;
  r.blocksize = blocksize;
  r.q = Tensor::empty(x.shape(), DType::U8);
  r.absmax = Tensor::empty({(n + blocksize - 1) / blocksize}, DType::F32);
  quantize_blockwise_8bit_raw(x.raw(), x.dtype(), n, lut, blocksize, r.q.data<uint8_t>(),
                              r.absmax.data<float>());
  return r;
}

Tensor dequantize_blockwise_8bit(const Blockwise8& b, const std::vector<float>& code, DType out_dtype) {
  if (b.q.dtype() != DType::U8 || b.absmax.dtype() != DType::F32)
    throw_error(ErrorKind::Usage, "dequantize_blockwise_8bit: expected U8 codes and F32 absmax, got ",
                b.q.describe(), " and ", b.absmax.describe());
  if (code.size() != 256)
    throw_error(ErrorKind::Usage, "dequantize_blockwise_8bit: code book has ", code.size(),
                " values, expected 256");
  const int64_t n = b.q.numel();
  if (b.absmax.numel() != (n + b.blocksize - 1) / b.blocksize)
    throw_error(ErrorKind::Shape, "dequantize_blockwise_8bit: absmax has ", b.absmax.numel(),
                " values, expected ", (n + b.blocksize - 1) / b.blocksize, " for ", n, " codes in blocks of ",
                b.blocksize);
  Tensor out = Tensor::empty(b.q.shape(), out_dtype);
  dequantize_blockwise_8bit_raw(b.q.data<uint8_t>(), b.absmax.data<float>(), code.data(), n, b.blocksize,
                                out_dtype, out.raw());
  return out;
}

}  // namespace qtune
