// NF4 / FP4 blockwise quantize and dequantize (rules in quant4.h). Each block is independent and starts on
// an even element (block sizes are powers of two >= 32), so blocks write whole bytes and run in parallel.
#include "quant/quant4.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/error.h"
#include "quant/bnb_cuda_rules.h"
#include "quant/double_quant.h"
#include "quant/float_io.h"

namespace qtune {

using namespace quant_detail;

namespace {

// The smallest absmax a partial last block is divided by (torch's clamp(min=1e-38) in f32, a subnormal).
constexpr float kTinyAbsmax = 1e-38f;

// Nearest-code search: the code values sorted (stable, so FP4's two zeros keep index order 0, 8), the 15
// f32 midpoints, and the code index of each sorted slot. code = order[#midpoints < v].
struct Code4Search {
  float mids[15];
  uint8_t order[16];
  explicit Code4Search(QuantType qt) {
    const float* c = code4(qt);
    int idx[16];
    std::iota(idx, idx + 16, 0);
    std::stable_sort(idx, idx + 16, [&](int a, int b) { return c[a] < c[b]; });
    for (int i = 0; i < 16; i++) order[i] = (uint8_t)idx[i];
    for (int i = 0; i < 15; i++) mids[i] = (c[idx[i]] + c[idx[i + 1]]) / 2.0f;
  }
  uint8_t find(float v) const {
    int count = 0;
    for (int i = 0; i < 15; i++) count += mids[i] < v;  // a tie (v == midpoint) stays below
    return order[count];
  }
};

const Code4Search& search_for(QuantType qt) {
  static const Code4Search nf4(QuantType::NF4), fp4(QuantType::FP4);
  return qt == QuantType::NF4 ? nf4 : fp4;
}

template <class Io>
void quantize_blocks(const typename Io::T* x, int64_t n, int64_t blocksize, const Code4Search& cs,
                     uint8_t* packed, float* absmax) {
  const int64_t nb = (n + blocksize - 1) / blocksize, full = n / blocksize;
#pragma omp parallel
  {
    // per thread: the block's scaled values, then the sorted-slot index of each (plain loops that vectorise)
    std::vector<float> v((size_t)blocksize + 1);
    std::vector<int32_t> slot((size_t)blocksize + 1);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
      const int64_t start = b * blocksize, len = std::min(n, start + blocksize) - start;
      const typename Io::T* xb = x + start;
      float a = 0.0f;
      for (int64_t i = 0; i < len; i++) a = std::max(a, std::fabs(Io::load(xb[i])));
      // full blocks: x * (1 / max(a, tiny)) with absmax a; the partial last block: x / max(a, tiny), stored
      const bool partial = b >= full;
      const float denom = std::max(a, kTinyAbsmax), inv = 1.0f / denom;
      absmax[b] = partial ? denom : a;
      if (partial)
        for (int64_t i = 0; i < len; i++) v[i] = Io::load(xb[i]) / denom;
      else
        for (int64_t i = 0; i < len; i++) v[i] = Io::load(xb[i]) * inv;
      v[len] = 0.0f;  // an odd count pads with the code of 0
      const int64_t len2 = (len + 1) & ~int64_t(1);
      for (int64_t i = 0; i < len2; i++) v[i] = std::min(std::max(v[i], -1.0f), 1.0f);
      for (int64_t i = 0; i < len2; i++) slot[i] = 0;
      for (int m = 0; m < 15; m++) {
        const float mid = cs.mids[m];
        for (int64_t i = 0; i < len2; i++) slot[i] += v[i] > mid;  // a tie (v == midpoint) stays below
      }
      uint8_t* pb = packed + start / 2;
      for (int64_t i = 0; i < len2; i += 2)
        pb[i / 2] = (uint8_t)((cs.order[slot[i]] << 4) | cs.order[slot[i + 1]]);
    }
  }
}

template <class Io>
void dequantize_blocks(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                       const float* code, typename Io::T* out) {
  const int64_t nb = (n + blocksize - 1) / blocksize;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t start = b * blocksize, end = std::min(n, start + blocksize);
    const float s = absmax[b];
    for (int64_t i = start; i < end; i++) {
      const uint8_t byte = packed[i >> 1];
      const uint8_t c = (i & 1) ? (byte & 0x0F) : (byte >> 4);
      out[i] = Io::store(code[c] * s);
    }
  }
}

void require_cpu_float(const Tensor& x, const char* what) {
  if (!x.defined()) throw_error(ErrorKind::Usage, what, ": undefined tensor");
  if (x.is_cuda()) throw_error(ErrorKind::Usage, what, ": expected a CPU tensor, got ", x.describe());
  if (x.dtype() != DType::F32 && x.dtype() != DType::BF16 && x.dtype() != DType::F16)
    throw_error(ErrorKind::Usage, what, ": expected F32, BF16 or F16, got ", x.describe());
}

}  // namespace

void quantize_4bit_raw(const void* x, DType dtype, int64_t n, int64_t blocksize, QuantType qt,
                       uint8_t* packed, float* absmax) {
  check_blocksize(blocksize, "quantize_4bit");
  with_float_io(dtype, "quantize_4bit", [&](auto io) {
    using Io = decltype(io);
    quantize_blocks<Io>(static_cast<const typename Io::T*>(x), n, blocksize, search_for(qt), packed, absmax);
  });
}

void dequantize_4bit_raw(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                         QuantType qt, DType out_dtype, void* out) {
  check_blocksize(blocksize, "dequantize_4bit");
  with_float_io(out_dtype, "dequantize_4bit", [&](auto io) {
    using Io = decltype(io);
    dequantize_blocks<Io>(packed, absmax, n, blocksize, code4(qt), static_cast<typename Io::T*>(out));
  });
}

Quant4Tensor quantize_4bit(const Tensor& x, QuantType qt, int64_t blocksize, bool double_quant,
                           BnbBackend backend) {
  require_cpu_float(x, "quantize_4bit");
  check_blocksize(blocksize, "quantize_4bit");
  const int64_t n = x.numel();
  if (n == 0) throw_error(ErrorKind::Usage, "quantize_4bit: empty tensor ", x.describe());
  Quant4Tensor q;
  q.quant_type = qt;
  q.blocksize = blocksize;
  q.shape = x.shape();
  q.dtype = x.dtype();
  q.packed = Tensor::empty({(n + 1) / 2, 1}, DType::U8);
  Tensor absmax = Tensor::empty({q.num_blocks()}, DType::F32);
  if (backend == BnbBackend::Cuda)
    quantize_4bit_cuda_rules_raw(x.raw(), x.dtype(), n, blocksize, qt, q.packed.data<uint8_t>(),
                                 absmax.data<float>());
  else
    quantize_4bit_raw(x.raw(), x.dtype(), n, blocksize, qt, q.packed.data<uint8_t>(), absmax.data<float>());
  if (!double_quant) {
    q.absmax = absmax;
    return q;
  }
  const int64_t nb = q.num_blocks();
  NestedAbsmax nested = double_quantize_absmax(absmax.data<float>(), nb, backend);
  q.nested = true;
  q.offset = nested.offset;
  q.nested_blocksize = kNestedBlocksize;
  q.absmax = Tensor::empty({nb}, DType::U8);
  std::memcpy(q.absmax.raw(), nested.q.data(), (size_t)nb);
  q.nested_absmax = Tensor::from_f32(nested.absmax, {(int64_t)nested.absmax.size()});
  q.nested_code = Tensor::from_f32(create_dynamic_map(true), {256});
  return q;
}

void validate_quant4(const Quant4Tensor& q, const std::string& context) {
  auto fail = [&](const auto&... parts) { throw_error(ErrorKind::Format, context, ": ", parts...); };
  for (int64_t d : q.shape)
    if (d < 0) fail("negative dimension in shape ", shape_str(q.shape));
  const int64_t n = q.numel();
  if (n <= 0) fail("empty shape ", shape_str(q.shape));
  bool pow2 = q.blocksize > 0 && (q.blocksize & (q.blocksize - 1)) == 0;
  if (!pow2 || q.blocksize < 32 || q.blocksize > 4096)
    fail("bad block size ", q.blocksize, " (expected a power of two from 32 to 4096)");
  if (q.dtype != DType::F32 && q.dtype != DType::BF16 && q.dtype != DType::F16)
    fail("unsupported original dtype ", dtype_name(q.dtype));
  if (!q.packed.defined()) fail("missing packed data");
  if (q.packed.dtype() != DType::U8 || q.packed.numel() != (n + 1) / 2)
    fail("packed data is ", q.packed.describe(), ", expected ", (n + 1) / 2, " U8 bytes for shape ",
         shape_str(q.shape));
  const int64_t nb = q.num_blocks();
  const DType absmax_dtype = q.nested ? DType::U8 : DType::F32;
  if (!q.absmax.defined()) fail("missing absmax");
  if (q.absmax.dtype() != absmax_dtype || q.absmax.numel() != nb)
    fail("absmax is ", q.absmax.describe(), ", expected ", nb, " ", dtype_name(absmax_dtype), " values (", n,
         " values in blocks of ", q.blocksize, ")");
  if (!q.nested) return;
  if (q.nested_blocksize != kNestedBlocksize)
    fail("nested block size ", q.nested_blocksize, ", expected 256");
  const int64_t nb2 = (nb + kNestedBlocksize - 1) / kNestedBlocksize;
  if (!q.nested_absmax.defined() || q.nested_absmax.dtype() != DType::F32 || q.nested_absmax.numel() != nb2)
    fail("nested absmax is ", q.nested_absmax.defined() ? q.nested_absmax.describe() : std::string("missing"),
         ", expected ", nb2, " F32 values");
  if (!q.nested_code.defined() || q.nested_code.dtype() != DType::F32 || q.nested_code.numel() != 256)
    fail("nested code book is ", q.nested_code.defined() ? q.nested_code.describe() : std::string("missing"),
         ", expected 256 F32 values");
  if (!std::isfinite(q.offset)) fail("nested offset is not finite");
}

Tensor quant4_absmax_f32(const Quant4Tensor& q) {
  validate_quant4(q, "quant4_absmax_f32");
  if (!q.nested) return q.absmax;
  const int64_t nb = q.num_blocks();
  Tensor out = Tensor::empty({nb}, DType::F32);
  double_dequantize_absmax(q.absmax.data<uint8_t>(), q.nested_absmax.data<float>(),
                           q.nested_code.data<float>(), q.offset, nb, out.data<float>());
  return out;
}

Tensor dequantize_4bit(const Quant4Tensor& q) {
  return dequantize_4bit(q, q.dtype);
}

Tensor dequantize_4bit(const Quant4Tensor& q, DType out_dtype) {
  Tensor absmax = quant4_absmax_f32(q);  // validates q
  if (q.packed.is_cuda()) throw_error(ErrorKind::Usage, "dequantize_4bit: packed data is on the GPU");
  Tensor out = Tensor::empty(q.shape, out_dtype);
  dequantize_4bit_raw(q.packed.data<uint8_t>(), absmax.data<float>(), q.numel(), q.blocksize, q.quant_type,
                      out_dtype, out.raw());
  return out;
}

}  // namespace qtune
