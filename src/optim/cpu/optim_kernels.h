// Per-tensor optimizer update kernels on host memory (f32 params and grads). Each one reproduces the
// arithmetic of its reference operation by operation, in f32 with the reference's scalar roundings:
//   adamw_step_f32        torch.optim.AdamW (single-tensor path): p *= 1-lr·wd; m = lerp(m, g, 1-β1);
//                         v = v·β2 + (1-β2)·g·g; p += -(lr/bc1) · m / (sqrt(v)/sqrt(bc2) + eps)
//   bnb_adam32_step       bitsandbytes' CPU 32-bit "adam" kernel (AdamW8bit on tensors under
//                         min_8bit_size): m = m·β1 + (1-β1)·g; v = v·β2 + (1-β2)·g·g;
//                         p *= 1-lr·wd; p += (-lr·c2/c1) · m / (sqrt(v) + eps·c2), c2 = sqrt(1-β2^t)
//   bnb_lion32_step       bitsandbytes' CPU 32-bit "lion": p *= 1-lr·wd; p -= lr·sign(m·β1 + g·(1-β1));
//                         m = m·β2 + (1-β2)·g
//   bnb_adam8_step / bnb_lion8_step: bitsandbytes' CPU 8-bit blockwise kernels: dequantize the states
//                         (code[q]·absmax), the update above (8-bit Adam: denom = sqrt(v)/c2 + eps,
//                         p += (-lr/c1)·m/denom), then requantize with a fresh absmax per 256-block
//                         (first moment: signed dynamic map, second: unsigned dynamic map).
// Scalars (lr, betas, ...) arrive as double, as Python hands them to torch, and are rounded to f32 where
// torch rounds them.
#pragma once
#include <cstdint>

#include "quant/blockwise8.h"

namespace qtune {

struct AdamHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;  // 1-based, already incremented for this update
};

void adamw_step_f32(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h);
void bnb_adam32_step(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h);
void bnb_lion32_step(float* p, const float* g, float* m, int64_t n, const AdamHyper& h);

// q1/q2: n bytes; absmax1/absmax2: ceil(n / blocksize) floats; read and rewritten in place.
void bnb_adam8_step(float* p, const float* g, uint8_t* q1, float* absmax1, uint8_t* q2, float* absmax2,
                    int64_t n, int64_t blocksize, const Quant8Lut& map1, const Quant8Lut& map2,
                    const AdamHyper& h);
void bnb_lion8_step(float* p, const float* g, uint8_t* q1, float* absmax1, int64_t n, int64_t blocksize,
                    const Quant8Lut& map1, const AdamHyper& h);

}  // namespace qtune
