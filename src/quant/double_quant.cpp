// Nested absmax quantization and torch's f32 mean on the CPU and on CUDA (the offset). The mean must be
// torch's to the last bit: the offset is stored in the file and shifts every nested code, so a plain
// double-precision mean would disagree with bitsandbytes in about a third of the tensors.
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

int64_t last_pow2(int64_t n) {
  int64_t p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

// A block's tree over its threads' sums (lane[0 .. width), width a power of two): halving through shared
// memory down to one warp, then warp shuffles with the offset halving from 16 (torch's CUDA order).
float block_tree_sum(std::vector<float>& lane, int64_t width) {
  for (int64_t off = width / 2; off >= 32; off /= 2)
    for (int64_t i = 0; i < off; i++) lane[(size_t)i] += lane[(size_t)(i + off)];
  for (int64_t off = std::min<int64_t>(width, 32) / 2; off > 0; off /= 2)
    for (int64_t i = 0; i < off; i++) lane[(size_t)i] += lane[(size_t)(i + off)];
  return lane[0];
}

}  // namespace

float torch_cuda_mean_f32(const float* x, int64_t n, int sm_count, int max_threads_per_sm) {
  if (n <= 0) throw_error(ErrorKind::Usage, "torch_cuda_mean_f32: empty input");
  const bool vec = n >= 128;  // loads of 4 values along the reduced dimension
  const int64_t dim0 = vec ? n / 4 : n;
  const int64_t width = std::min<int64_t>(last_pow2(dim0), 512);  // threads per block (one row of them)
  const int64_t per_thread = (n + width - 1) / width;             // torch counts values, not vectors
  int64_t ctas = 1;                                               // blocks that share the sum
  if (per_thread >= 256) {
    const int64_t target = (int64_t)sm_count * (max_threads_per_sm / width);
    ctas = std::clamp(target, (per_thread + 255) / 256, (per_thread + 15) / 16);
  }
  const int64_t stride = width * ctas;  // in vectors (vec) or values
  std::vector<float> lane((size_t)width), partial((size_t)ctas);
  for (int64_t y = 0; y < ctas; y++) {
    for (int64_t t = 0; t < width; t++) {
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // one accumulator per vector slot / unrolled load
      int64_t idx = t + y * width;
      if (vec) {
        for (; idx * 4 + 3 < n; idx += stride)
          for (int i = 0; i < 4; i++) acc[i] += x[idx * 4 + i];
        const int64_t tail = n - n % 4 + t;  // the last n % 4 values, by the first block's threads
        if (y == 0 && tail < n) acc[0] += x[tail];
      } else {
        for (; idx + 3 * stride < n; idx += 4 * stride)
          for (int i = 0; i < 4; i++) acc[i] += x[idx + i * stride];
        for (int i = 0; i < 4 && idx < n; i++, idx += stride) acc[i] += x[idx];
      }
      lane[(size_t)t] = ((acc[0] + acc[1]) + acc[2]) + acc[3];
    }
    partial[(size_t)y] = block_tree_sum(lane, width);
  }
  float sum = partial[0];
  if (ctas > 1) {  // the last block to finish adds the blocks' sums, its threads striding over them
    for (int64_t t = 0; t < width; t++) {
      float v = 0.0f;
      for (int64_t k = t; k < ctas; k += width) v += partial[(size_t)k];
      lane[(size_t)t] = v;
    }
    sum = block_tree_sum(lane, width);
  }
  return sum * (1.0f / (float)n);
}

float torch_mean_f32(const float* x, int64_t n) {
  if (n <= 0) throw_error(ErrorKind::Usage, "torch_mean_f32: empty input");
  return torch_sum_f32(x, n) / (float)n;
}

NestedAbsmax double_quantize_absmax(const float* absmax, int64_t n, BnbBackend backend) {
  if (n <= 0) throw_error(ErrorKind::Usage, "double_quantize_absmax: no absmax values");
  static const Quant8Lut lut(create_dynamic_map(true));
  NestedAbsmax r;
  r.offset = backend == BnbBackend::Cuda ? torch_cuda_mean_f32(absmax, n) : torch_mean_f32(absmax, n);
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
