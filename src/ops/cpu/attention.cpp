// CPU causal GQA attention over a KV cache: for batch b, query t (position q_offset + t), head h (kv head
// h / (Hq/Hkv)): out = Σ_s softmax_s(q·k_s / sqrt(D)) v_s over s <= q_offset + t. One (b, t, h) per task.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

void attention_forward(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset,
                       int64_t kv_len) {
  int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  int64_t Smax = k.size(1), Hkv = k.size(2), group = Hq / Hkv;
  float scale = 1.0f / std::sqrt((float)D);
  const float* qd = q.data<float>();
  const float* kd = k.data<float>();
  const float* vd = v.data<float>();
  float* od = out.data<float>();
  int64_t work = B * T * Hq * kv_len * D;  // multiply-adds, roughly
#pragma omp parallel if (work >= kParallelMinWork)
  {
    std::vector<float> p(kv_len);  // scores, then probabilities
    std::vector<float> acc(D);
#pragma omp for schedule(dynamic, 4) collapse(3)
    for (int64_t b = 0; b < B; b++)
      for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < Hq; h++) {
          const float* qr = qd + ((b * T + t) * Hq + h) * D;  // [D]
          int64_t hk = h / group;
          int64_t S = std::min(kv_len, q_offset + t + 1);  // keys this query sees
          float mx = -INFINITY;
          for (int64_t s = 0; s < S; s++) {
            const float* kr = kd + ((b * Smax + s) * Hkv + hk) * D;  // [D]
            float dot = 0;
            for (int64_t d = 0; d < D; d++) dot += qr[d] * kr[d];
            p[s] = dot * scale;
            mx = std::max(mx, p[s]);
          }
          float sum = 0;
          for (int64_t s = 0; s < S; s++) {
            p[s] = std::exp(p[s] - mx);
            sum += p[s];
          }
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t s = 0; s < S; s++) {
            const float* vr = vd + ((b * Smax + s) * Hkv + hk) * D;  // [D]
            float w = p[s];
            for (int64_t d = 0; d < D; d++) acc[d] += w * vr[d];
          }
          float* o = od + ((b * T + t) * Hq + h) * D;  // [D]
          float inv = 1.0f / sum;
          for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
        }
  }
}

}  // namespace cpu
}  // namespace qtune
