// CPU rotary embedding backward: the forward rotates each (x1, x2) pair by a; its transpose rotates the
// gradient by −a (same angles as cpu/rope.cpp: a = positions[n]·inv_freq[i] as an f32 product).
#include <cmath>
#include <vector>

#include "ops/cpu/backward_ops.h"
#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

void rope_backward(Tensor& dx, const Tensor& positions, const Tensor& inv_freq) {
  int64_t N = dx.size(0), H = dx.size(1), D = dx.size(2), half = D / 2;
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
        sn[i] = (float)std::sin((double)a);
      }
      for (int64_t h = 0; h < H; h++) {
        float* r = dx.data<float>() + (n * H + h) * D;  // [D]
        for (int64_t i = 0; i < half; i++) {
          float g1 = r[i], g2 = r[i + half];
          r[i] = g1 * cs[i] + g2 * sn[i];
          r[i + half] = g2 * cs[i] - g1 * sn[i];
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace qtune
