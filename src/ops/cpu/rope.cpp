// CPU rotary embedding (rotate_half): for each row n and head, with a = positions[n]·inv_freq[i] (an f32
// product, as HF computes it), x1' = x1·cos a − x2·sin a, x2' = x2·cos a + x1·sin a over i < D/2.
// The backward is the transpose: the same rotation by −a, so both share rotate_pairs.
#include <cmath>
#include <vector>

#include "ops/cpu/backward_ops.h"
#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

namespace {

// Rotates every (x[i], x[i + D/2]) pair of x[N, H, D] in place by sign·a.
void rotate_pairs(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float sign) {
  int64_t N = x.size(0), H = x.size(1), D = x.size(2), half = D / 2;
  const int32_t* pos = positions.data<int32_t>();
  const float* inv = inv_freq.data<float>();
#pragma omp parallel if (N * H * D >= kParallelMinWork)
  {
    std::vector<float> cs(half), sn(half);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) {
      for (int64_t i = 0; i < half; i++) {
        float a = (float)pos[n] * inv[i];
        cs[i] = (float)std::cos((double)a);
        sn[i] = sign * (float)std::sin((double)a);
      }
      for (int64_t h = 0; h < H; h++) {
        float* r = x.data<float>() + (n * H + h) * D;  // [D]
        for (int64_t i = 0; i < half; i++) {
          float x1 = r[i], x2 = r[i + half];
          r[i] = x1 * cs[i] - x2 * sn[i];
          r[i + half] = x2 * cs[i] + x1 * sn[i];
        }
      }
    }
  }
}

}  // namespace

void rope_forward(Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  rotate_pairs(x, positions, inv_freq, 1.0f);
}

void rope_backward(Tensor& dx, const Tensor& positions, const Tensor& inv_freq) {
  rotate_pairs(dx, positions, inv_freq, -1.0f);
}

}  // namespace cpu
}  // namespace qtune
