// CPU optimizer kernels (see optim_kernels.h for the formulas). Built with -ffp-contract=off so that the
// f32 operations round one at a time as torch's do; std::fma appears exactly where torch's vectorised CPU
// kernels fuse (lerp, add with alpha, addcmul), which makes every state bit-identical to torch/bitsandbytes
// (the params differ by a few ulp: torch divides by a scalar differently).
#include <algorithm>
#include <cmath>
#include <vector>

#include "optim/cpu/optim_kernels.h"

namespace qtune {

namespace {

inline float sign_f(float x) {
  return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
}

// torch.lerp(start, end, w) for a weight below 0.5: fma(w, end - start, start).
inline float lerp_small(float start, float end, float w) {
  return std::fma(w, end - start, start);
}

}  // namespace

void adamw_step_f32(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h) {
  const double bc1 = 1.0 - std::pow(h.beta1, (double)h.step);
  const double bc2 = 1.0 - std::pow(h.beta2, (double)h.step);
  const float decay = (float)(1.0 - h.lr * h.weight_decay);
  const bool do_decay = h.weight_decay != 0.0;
  const float w1 = (float)(1.0 - h.beta1);
  const float b2 = (float)h.beta2, w2 = (float)(1.0 - h.beta2);
  const float bc2_sqrt = (float)std::sqrt(bc2);
  const float eps = (float)h.eps;
  const float neg_step = (float)(-(h.lr / bc1));
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    float pi = p[i];
    if (do_decay) pi = pi * decay;
    const float gi = g[i];
    const float mi = lerp_small(m[i], gi, w1);
    const float vi = std::fma(w2 * gi, gi, v[i] * b2);
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    p[i] = pi + neg_step * (mi / denom);
    m[i] = mi;
    v[i] = vi;
  }
}

void bnb_adam32_step(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h) {
  const double c1 = 1.0 - std::pow(h.beta1, (double)h.step);
  const double c2 = std::sqrt(1.0 - std::pow(h.beta2, (double)h.step));
  const float step_size = (float)(-h.lr * c2 / c1);
  const float decay = (float)(1.0 - h.lr * h.weight_decay);
  const bool do_decay = h.weight_decay > 0.0;
  const float b1 = (float)h.beta1, w1 = (float)(1.0 - h.beta1);
  const float b2 = (float)h.beta2, w2 = (float)(1.0 - h.beta2);
  const float eps_c2 = (float)(h.eps * c2);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = std::fma(w1, gi, m[i] * b1);
    const float vi = std::fma(w2 * gi, gi, v[i] * b2);
    float pi = p[i];
    if (do_decay) pi = pi * decay;
    p[i] = pi + step_size * (mi / (std::sqrt(vi) + eps_c2));
    m[i] = mi;
    v[i] = vi;
  }
}

void bnb_lion32_step(float* p, const float* g, float* m, int64_t n, const AdamHyper& h) {
  const float decay = (float)(1.0 - h.lr * h.weight_decay);
  const bool do_decay = h.weight_decay > 0.0;
  const float b1 = (float)h.beta1, w1 = (float)(1.0 - h.beta1);
  const float b2 = (float)h.beta2, w2 = (float)(1.0 - h.beta2);
  const float neg_lr = (float)(-h.lr);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    float pi = p[i];
    if (do_decay) pi = pi * decay;
    p[i] = pi + neg_lr * sign_f(m[i] * b1 + gi * w1);
    m[i] = std::fma(w2, gi, m[i] * b2);
  }
}

namespace {

// Blocks are updated in chunks of this many blocks (dequantize → update → requantize per chunk).
constexpr int64_t kChunkBlocks = 64;

template <class Update>
void for_each_chunk(int64_t n, int64_t blocksize, const Update& update) {
  const int64_t chunk = blocksize * kChunkBlocks;
  const int64_t chunks = (n + chunk - 1) / chunk;
#pragma omp parallel if (chunks > 1)
  {
    std::vector<float> s1(chunk), s2(chunk);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t begin = c * chunk;
      update(begin, std::min(chunk, n - begin), s1.data(), s2.data());
    }
  }
}

}  // namespace

void bnb_adam8_step(float* p, const float* g, uint8_t* q1, float* absmax1, uint8_t* q2, float* absmax2,
                    int64_t n, int64_t blocksize, const Quant8Lut& map1, const Quant8Lut& map2,
                    const AdamHyper& h) {
  const double c1 = 1.0 - std::pow(h.beta1, (double)h.step);
  const double c2d = std::sqrt(1.0 - std::pow(h.beta2, (double)h.step));
  const float c2 = (float)c2d;
  const float neg_step = (float)(-h.lr / c1);
  const float decay = (float)(1.0 - h.lr * h.weight_decay);
  const bool do_decay = h.weight_decay > 0.0;
  const float b1 = (float)h.beta1, w1 = (float)(1.0 - h.beta1);
  const float b2 = (float)h.beta2, w2 = (float)(1.0 - h.beta2);
  const float eps = (float)h.eps;
  for_each_chunk(n, blocksize, [&](int64_t begin, int64_t len, float* s1, float* s2) {
    const int64_t blk = begin / blocksize;
    dequantize_blockwise_8bit_raw(q1 + begin, absmax1 + blk, map1.code().data(), len, blocksize, DType::F32,
                                  s1);
    dequantize_blockwise_8bit_raw(q2 + begin, absmax2 + blk, map2.code().data(), len, blocksize, DType::F32,
                                  s2);
    for (int64_t i = 0; i < len; ++i) {
      const float gi = g[begin + i];
      const float mi = std::fma(w1, gi, s1[i] * b1);
      const float vi = std::fma(w2 * gi, gi, s2[i] * b2);
      const float denom = std::sqrt(vi) / c2 + eps;
      float pi = p[begin + i];
      if (do_decay) pi = pi * decay;
      p[begin + i] = pi + neg_step * (mi / denom);
      s1[i] = mi;
      s2[i] = vi;
    }
    quantize_blockwise_8bit_raw(s1, DType::F32, len, map1, blocksize, q1 + begin, absmax1 + blk);
    quantize_blockwise_8bit_raw(s2, DType::F32, len, map2, blocksize, q2 + begin, absmax2 + blk);
  });
}

void bnb_lion8_step(float* p, const float* g, uint8_t* q1, float* absmax1, int64_t n, int64_t blocksize,
                    const Quant8Lut& map1, const AdamHyper& h) {
  const float decay = (float)(1.0 - h.lr * h.weight_decay);
  const bool do_decay = h.weight_decay > 0.0;
  const float b1 = (float)h.beta1, w1 = (float)(1.0 - h.beta1);
  const float b2 = (float)h.beta2, w2 = (float)(1.0 - h.beta2);
  const float neg_lr = (float)(-h.lr);
  for_each_chunk(n, blocksize, [&](int64_t begin, int64_t len, float* s1, float*) {
    const int64_t blk = begin / blocksize;
    dequantize_blockwise_8bit_raw(q1 + begin, absmax1 + blk, map1.code().data(), len, blocksize, DType::F32,
                                  s1);
    for (int64_t i = 0; i < len; ++i) {
      const float gi = g[begin + i];
      float pi = p[begin + i];
      if (do_decay) pi = pi * decay;
      p[begin + i] = pi + neg_lr * sign_f(s1[i] * b1 + gi * w1);
      s1[i] = std::fma(w2, gi, s1[i] * b2);
    }
    quantize_blockwise_8bit_raw(s1, DType::F32, len, map1, blocksize, q1 + begin, absmax1 + blk);
  });
}

}  // namespace qtune
