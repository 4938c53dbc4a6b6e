// Test helpers that check codes written by bitsandbytes' CUDA rules (the GPU kernels, or transformers on a
// GPU) against the host model of those rules (quant/bnb_cuda_rules.h): equal except where the GPU's
// approximate reciprocal moves a code (count_code_diffs in fixture.h).
#pragma once
#include <cmath>
#include <vector>

#include "core/tensor.h"
#include "fixture.h"
#include "quant/bnb_cuda_rules.h"
#include "quant/codebook.h"
#include "quant/double_quant.h"
#include "quant/int8.h"
#include "quant/quant4.h"

namespace qtune_test {

using namespace qtune;

// The 4-bit codes of n packed values (element 2i in the high nibble), and the bytes of a tensor (any device).
inline std::vector<uint8_t> nibbles(const Tensor& packed, int64_t n) {
  Tensor p = packed.to(Device::CPU);
  std::vector<uint8_t> c((size_t)n);
  for (int64_t i = 0; i < n; i++) {
    const uint8_t b = p.data<uint8_t>()[i / 2];
    c[(size_t)i] = (i & 1) ? (b & 0x0F) : (b >> 4);
  }
  return c;
}

inline std::vector<uint8_t> bytes_of(const Tensor& t) {
  Tensor c = t.to(Device::CPU);
  const uint8_t* p = static_cast<const uint8_t*>(c.raw());
  return std::vector<uint8_t>(p, p + c.nbytes());
}

// got's 4-bit (and nested 8-bit) codes of x against the host model of bitsandbytes' CUDA rules (got on any
// device).
inline void count_quant4_diffs(const Tensor& x, const Quant4Tensor& got, QuantType qt, int64_t bs,
                               CodeDiff& d) {
  const int64_t n = x.numel();
  const Quant4Tensor plain = quantize_4bit(x, qt, bs, false, BnbBackend::Cuda);
  const std::vector<float> xv = x.to_dtype(DType::F32).to_f32_vector(), am = plain.absmax.to_f32_vector();
  count_code_diffs(
      n, nibbles(plain.packed, n).data(), nibbles(got.packed, n).data(),
      [&](int64_t k) { return bnb_cuda_reciprocal(am[(size_t)(k / bs)]); },
      [&](int64_t k, float inv) { return bnb_cuda_code4(qt, bnb_cuda_scaled(xv[(size_t)k], inv)); }, d);
  if (!got.nested) return;
  const std::vector<float> dyn = create_dynamic_map(true);
  std::vector<float> centered(am.size());
  for (size_t k = 0; k < am.size(); k++) centered[k] = am[k] - got.offset;
  const NestedAbsmax want = double_quantize_absmax(am.data(), (int64_t)am.size(), BnbBackend::Cuda);
  count_code_diffs((int64_t)am.size(), want.q.data(), bytes_of(got.absmax).data(),
                   [&](int64_t k) { return bnb_cuda_reciprocal(want.absmax[(size_t)(k / 256)]); },
                   [&](int64_t k, float inv) {
                     return bnb_cuda_code8(dyn.data(), bnb_cuda_scaled(centered[(size_t)k], inv));
                   },
                   d);
}

// The GPU's row scale is bitsandbytes' CUDA one, 127 · rcp(absmax) with the approximate reciprocal, where the
// CPU path of int8.h takes (1 / absmax) · 127: a code may differ by one only where that moves x · scale
// across a half.
inline CodeDiff int8_code_diffs(const Tensor& x16, const Int8Rowwise& cpu, const Tensor& q_gpu) {
  CodeDiff d;
  const int64_t rows = x16.size(0), k = x16.size(1);
  const std::vector<float> xv = x16.to_f32_vector(), sv = cpu.scale.to_f32_vector();
  const Tensor q = q_gpu.to(Device::CPU);
  count_code_diffs(
      rows * k, cpu.q.data<int8_t>(), q.data<int8_t>(), [&](int64_t e) { return 1.0f / sv[(size_t)(e / k)]; },
      [&](int64_t e, float inv) { return std::nearbyint(xv[(size_t)e] * (127.0f * inv)); }, d);
  return d;
}

}  // namespace qtune_test
