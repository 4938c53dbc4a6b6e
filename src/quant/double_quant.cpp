// Nested absmax quantization and torch's f32 mean (the offset). The mean must be torch's to the last bit:
// the offset is stored in the file and shifts every nested code, so a plain double-precision mean would
// disagree with bitsandbytes in about a third of the tensors.
#include "quant/double_quant.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "quant/blockwise8.h"
#include "quant/bnb_cuda_rules.h"
#include "quant/codebook.h"

namespace qtune {

namespace {

int64_t ceil_log2(int64_t x) {
  return x <= 2 ? 1 : (int64_t)std::ceil(std::log2((double)x));
}

// torch's row_sum over `size` elements of L lanes each (element i = x[i*L .. i*L+L-1]): 4 interleaved
// rows (ILP), each summed in chunks of 2^level_power with up to 4 levels of partial sums. out: [L].
template <int L>
void cascade_row_sum(const float* x, int64_t size, float* out) {
  constexpr int kLevels = 4, kRows = 4;
  const int64_t size_ilp = size / kRows;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2(size_ilp) / kLevels);
  const int64_t level_step = int64_t(1) << level_power, level_mask = level_step - 1;
  float acc[kLevels][kRows][L] = {};
  int64_t i = 0;
  while (i + level_step <= size_ilp) {
    for (int64_t j = 0; j < level_step; ++j, ++i)
      for (int k = 0; k < kRows; k++)
        for (int l = 0; l < L; l++) acc[0][k][l] += x[(i * kRows + k) * L + l];
    for (int j = 1; j < kLevels; j++) {
      for (int k = 0; k < kRows; k++)
        for (int l = 0; l < L; l++) {
          acc[j][k][l] += acc[j - 1][k][l];
          acc[j - 1][k][l] = 0.0f;
        }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < size_ilp; i++)
    for (int k = 0; k < kRows; k++)
      for (int l = 0; l < L; l++) acc[0][k][l] += x[(i * kRows + k) * L + l];
  for (int j = 1; j < kLevels; j++)
    for (int k = 0; k < kRows; k++)
      for (int l = 0; l < L; l++) acc[0][k][l] += acc[j][k][l];
  for (int64_t t = size_ilp * kRows; t < size; t++)
    for (int l = 0; l < L; l++) acc[0][0][l] += x[t * L + l];
  for (int k = 1; k < kRows; k++)
    for (int l = 0; l < L; l++) acc[0][0][l] += acc[0][k][l];
  for (int l = 0; l < L; l++) out[l] = acc[0][0][l];
}

float torch_sum_f32(const float* x, int64_t n) {
  constexpr int kLanes = 8;
  if (n < kLanes) {
    float r;
    cascade_row_sum<1>(x, n, &r);
    return r;
  }
  const int64_t nv = n / kLanes;
  float lanes[kLanes];
  cascade_row_sum<kLanes>(x, nv, lanes);
  float acc = 0.0f;
  for (int64_t t = nv * kLanes; t < n; t++) acc += x[t];
  for (int l = 0; l < kLanes; l++) acc += lanes[l];
  return acc;
}

}  // namespace

float torch_mean_f32(const float* x, int64_t n) {
  if (n <= 0) throw_error(ErrorKind::Usage, "torch_mean_f32: empty input");
  return torch_sum_f32(x, n) / (float)n;
}

NestedAbsmax double_quantize_absmax(const float* absmax, int64_t n, BnbBackend backend) {
  if (n <= 0) throw_error(ErrorKind::Usage, "double_quantize_absmax: no absmax values");
  static const Quant8Lut lut(create_dynamic_map(true));
  NestedAbsmax r;
  r.offset = torch_mean_f32(absmax, n);
  std::vector<float> centered((size_t)n);
  for (int64_t i = 0; i < n; i++) centered[(size_t)i] = absmax[i] - r.offset;
  r.q.resize((size_t)n);
  r.absmax.resize((size_t)((n + kNestedBlocksize - 1) / kNestedBlocksize));
  if (backend == BnbBackend::Cuda)
    quantize_8bit_cuda_rules_raw(centered.data(), DType::F32, n, lut.code().data(), kNestedBlocksize,
                                 r.q.data(), r.absmax.data());
  else
    quantize_blockwise_8bit_raw(centered.data(), DType::F32, n, lut, kNestedBlocksize, r.q.data(),
                                r.absmax.data());
  return r;
}

void double_dequantize_absmax(const uint8_t* q, const float* nested_absmax, const float* code, float offset,
                              int64_t n, float* out) {
  dequantize_blockwise_8bit_raw(q, nested_absmax, code, n, kNestedBlocksize, DType::F32, out);
  for (int64_t i = 0; i < n; i++) out[i] += offset;  // a separate rounding: no fused multiply-add
}

}  // namespace qtune
