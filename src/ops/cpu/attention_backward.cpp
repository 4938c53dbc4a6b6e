// CPU training attention (whole sequences, causal, GQA) and its backward, flash-attention style: the
// forward saves only the per-row log-sum-exp lse of the scaled scores; the backward recomputes each row's
// probabilities p_s = exp(q·k_s/√D − lse) instead of storing the T×T matrix.
//
// Which keys a query sees is one function, key_begin(): causal (s <= t) and, with seq_ids, not before
// the first token of its own packed example. A future mask (sliding window ...) changes only that.
// Forward: one (b, t, h) row per task. Backward: one (b, kv head) per task, so the dk/dv rows it
// accumulates into belong to that task alone (deterministic, no atomics).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/backward_ops.h"
#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

namespace {

// begin[b·T + t] = the first key query t of sequence b may see (it sees [begin, t]).
std::vector<int64_t> key_begin(int64_t B, int64_t T, const Tensor* seq_ids) {
  std::vector<int64_t> begin(B * T, 0);
  if (!seq_ids) return begin;
  const int32_t* id = seq_ids->data<int32_t>();  // [B, T]
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 1; t < T; t++)
      begin[b * T + t] = id[b * T + t] == id[b * T + t - 1] ? begin[b * T + t - 1] : t;
  return begin;
}

inline float dot(const float* a, const float* b, int64_t D) {
  float s = 0;
  for (int64_t d = 0; d < D; d++) s += a[d] * b[d];
  return s;
}

}  // namespace

void attention_forward_train(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor* seq_ids) {
  int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  int64_t Hkv = k.size(2), group = Hq / Hkv;
  float scale = 1.0f / std::sqrt((float)D);
  std::vector<int64_t> begin = key_begin(B, T, seq_ids);
  const float* qd = q.data<float>();  // [B, T, Hq, D]
  const float* kd = k.data<float>();  // [B, T, Hkv, D]
  const float* vd = v.data<float>();  // [B, T, Hkv, D]
  float* od = out.data<float>();      // [B, T, Hq, D]
  float* ld = lse.data<float>();      // [B, T, Hq]
  int64_t work = B * T * Hq * T * D / 2;
#pragma omp parallel if (work >= kParallelMinWork)
  {
    std::vector<float> p(T), acc(D);
#pragma omp for schedule(dynamic, 4) collapse(3)
    for (int64_t b = 0; b < B; b++)
      for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < Hq; h++) {
          const float* qr = qd + ((b * T + t) * Hq + h) * D;  // [D]
          int64_t hk = h / group, s0 = begin[b * T + t];
          float mx = -INFINITY;
          for (int64_t s = s0; s <= t; s++) {
            p[s] = dot(qr, kd + ((b * T + s) * Hkv + hk) * D, D) * scale;
            mx = std::max(mx, p[s]);
          }
          double sum = 0;
          for (int64_t s = s0; s <= t; s++) {
            p[s] = std::exp(p[s] - mx);
            sum += p[s];
          }
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t s = s0; s <= t; s++) {
            const float* vr = vd + ((b * T + s) * Hkv + hk) * D;  // [D]
            for (int64_t d = 0; d < D; d++) acc[d] += p[s] * vr[d];
          }
          float inv = (float)(1.0 / sum);
          float* o = od + ((b * T + t) * Hq + h) * D;  // [D]
          for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
          ld[(b * T + t) * Hq + h] = mx + (float)std::log(sum);
        }
  }
}

void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor* seq_ids) {
  int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  int64_t Hkv = k.size(2), group = Hq / Hkv;
  float scale = 1.0f / std::sqrt((float)D);
  std::vector<int64_t> begin = key_begin(B, T, seq_ids);
  const float* qd = q.data<float>();
  const float* kd = k.data<float>();
  const float* vd = v.data<float>();
  const float* od = out.data<float>();
  const float* gd = dout.data<float>();
  const float* ld = lse.data<float>();
  float* dqd = dq.data<float>();
  float* dkd = dk.data<float>();
  float* dvd = dv.data<float>();
  int64_t work = B * T * Hq * T * D;
#pragma omp parallel if (work >= kParallelMinWork)
  {
    std::vector<float> ds(T);
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t b = 0; b < B; b++)
      for (int64_t hk = 0; hk < Hkv; hk++)
        for (int64_t h = hk * group; h < (hk + 1) * group; h++)
          for (int64_t t = 0; t < T; t++) {
            int64_t row = (b * T + t) * Hq + h, s0 = begin[b * T + t];
            const float* qr = qd + row * D;  // [D]
            const float* gr = gd + row * D;  // [D]
            float delta = dot(gr, od + row * D, D), l = ld[row];
            float* dqr = dqd + row * D;
            for (int64_t s = s0; s <= t; s++) {
              int64_t kv = ((b * T + s) * Hkv + hk) * D;
              float p = std::exp(dot(qr, kd + kv, D) * scale - l);
              float* dvr = dvd + kv;
              for (int64_t d = 0; d < D; d++) dvr[d] += p * gr[d];
              ds[s] = p * (dot(gr, vd + kv, D) - delta) * scale;
            }
            for (int64_t s = s0; s <= t; s++) {
              int64_t kv = ((b * T + s) * Hkv + hk) * D;
              const float* kr = kd + kv;
              float* dkr = dkd + kv;
              float w = ds[s];
              for (int64_t d = 0; d < D; d++) {
                dqr[d] += w * kr[d];
                dkr[d] += w * qr[d];
              }
            }
          }
  }
}

}  // namespace cpu
}  // namespace qtune
