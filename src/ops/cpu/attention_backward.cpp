// CPU training attention (whole sequences, causal, GQA) and its backward, flash-attention style: the
// forward saves only the per-row log-sum-exp lse of the scaled scores; the backward recomputes the
// probabilities of one tile of query rows at a time instead of storing the T×T matrix.
//
// Work unit: a tile of up to kTile query rows [t0, t1) of one head, against the keys [s0, t1) that any of
// its rows may see; scores, P·V, dO·Vᵀ, dS·K, dSᵀ·Q and Pᵀ·dO are single-threaded sgemms on strided views
// of the [B, T, H, D] tensors (row stride H·D). Which keys a row sees is one function, key_begin():
// causal (s <= t) and, with seq_ids, not before the first token of its own packed example; a future
// mask (sliding window ...) changes only that and the masking loop.
// Forward: one (b, h, tile) per task. Backward: one (b, kv head) per task, looping over the query heads
// of its group and the tiles, so the dk/dv rows it accumulates belong to that task alone (deterministic).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

#include "ops/cpu/backward_ops.h"
#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

namespace {

constexpr int64_t kTile = 64;  // query rows per tile

void blas_single_thread() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

// begin[b·T + t] = the first key query t of sequence b may see (it sees [begin, t]); non-decreasing in t.
std::vector<int64_t> key_begin(int64_t B, int64_t T, const Tensor* seq_ids) {
  std::vector<int64_t> begin(B * T, 0);
  if (!seq_ids) return begin;
  const int32_t* id = seq_ids->data<int32_t>();  // [B, T]
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 1; t < T; t++)
      begin[b * T + t] = id[b * T + t] == id[b * T + t - 1] ? begin[b * T + t - 1] : t;
  return begin;
}

// c[M, N] = alpha·op(a)·op(b) + beta·c (row-major, one thread).
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N,
              (int)K, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

// p [R, S] holds scores q·k (unscaled) of rows t0.. against keys s0..; turns them into probabilities
// exp(scale·score − lse) with masked entries 0. lse_row(r) gives each row's lse.
template <class Lse>
void probabilities(float* p, int64_t R, int64_t S, int64_t t0, int64_t s0, const int64_t* begin, float scale,
                   Lse lse_row) {
  for (int64_t r = 0; r < R; r++) {
    float* pr = p + r * S;
    int64_t t = t0 + r, lo = begin[t] - s0, hi = t - s0;  // visible columns [lo, hi]
    float l = lse_row(r);
    for (int64_t j = 0; j < S; j++) pr[j] = (j < lo || j > hi) ? 0.0f : std::exp(pr[j] * scale - l);
  }
}

}  // namespace

void attention_forward_train(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor* seq_ids) {
  blas_single_thread();
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(2), group = Hq / Hkv, ldq = Hq * D, ldk = Hkv * D;
  const int64_t tiles = (T + kTile - 1) / kTile;
  const float scale = 1.0f / std::sqrt((float)D);
  std::vector<int64_t> begin = key_begin(B, T, seq_ids);
  const float* qd = q.data<float>();  // [B, T, Hq, D]
  const float* kd = k.data<float>();  // [B, T, Hkv, D]
  const float* vd = v.data<float>();  // [B, T, Hkv, D]
  float* od = out.data<float>();      // [B, T, Hq, D]
  float* ld = lse.data<float>();      // [B, T, Hq]
  int64_t work = B * Hq * T * T * D;
#pragma omp parallel if (work >= kParallelMinWork)
  {
    std::vector<float> p(kTile * T);  // scores → probabilities [R, S]
#pragma omp for schedule(dynamic, 1) collapse(3)
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < Hq; h++)
        for (int64_t tile = 0; tile < tiles; tile++) {
          int64_t t0 = tile * kTile, t1 = std::min(T, t0 + kTile), R = t1 - t0;
          const int64_t* bg = begin.data() + b * T;
          int64_t s0 = bg[t0], S = t1 - s0, hk = h / group;
          const float* qt = qd + ((b * T + t0) * Hq + h) * D;  // rows [R, D], stride ldq
          const float* ks = kd + ((b * T + s0) * Hkv + hk) * D;
          const float* vs = vd + ((b * T + s0) * Hkv + hk) * D;
          gemm(false, true, R, S, D, 1.0f, qt, ldq, ks, ldk, 0.0f, p.data(), S);  // q·kᵀ [R, S]
          for (int64_t r = 0; r < R; r++) {  // softmax per row (one exp per visible entry), and its lse
            float* pr = p.data() + r * S;
            int64_t t = t0 + r, lo = bg[t] - s0, hi = t - s0;
            float mx = -INFINITY;
            for (int64_t j = lo; j <= hi; j++) mx = std::max(mx, pr[j] * scale);
            double sum = 0;
            for (int64_t j = 0; j < S; j++) {
              pr[j] = (j < lo || j > hi) ? 0.0f : std::exp(pr[j] * scale - mx);
              sum += pr[j];
            }
            ld[(b * T + t) * Hq + h] = mx + (float)std::log(sum);
            float inv = (float)(1.0 / sum);
            for (int64_t j = lo; j <= hi; j++) pr[j] *= inv;
          }
          float* ot = od + ((b * T + t0) * Hq + h) * D;
          gemm(false, false, R, D, S, 1.0f, p.data(), S, vs, ldk, 0.0f, ot, ldq);  // P·V [R, D]
        }
  }
}

void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor* seq_ids) {
  blas_single_thread();
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(2), group = Hq / Hkv, ldq = Hq * D, ldk = Hkv * D;
  const int64_t tiles = (T + kTile - 1) / kTile;
  const float scale = 1.0f / std::sqrt((float)D);
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
  int64_t work = B * Hq * T * T * D;
#pragma omp parallel if (work >= kParallelMinWork)
  {
    std::vector<float> p(kTile * T), dp(kTile * T), delta(kTile);
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t b = 0; b < B; b++)
      for (int64_t hk = 0; hk < Hkv; hk++)
        for (int64_t h = hk * group; h < (hk + 1) * group; h++)
          for (int64_t tile = 0; tile < tiles; tile++) {
            int64_t t0 = tile * kTile, t1 = std::min(T, t0 + kTile), R = t1 - t0;
            const int64_t* bg = begin.data() + b * T;
            int64_t s0 = bg[t0], S = t1 - s0;
            int64_t qoff = ((b * T + t0) * Hq + h) * D, koff = ((b * T + s0) * Hkv + hk) * D;
            const float* qt = qd + qoff;       // [R, D], stride ldq
            const float* gt = gd + qoff;       // dO [R, D]
            for (int64_t r = 0; r < R; r++) {  // Δ = Σ_d dO·O per row
              const float* g = gt + r * ldq;
              const float* o = od + qoff + r * ldq;
              float s = 0;
              for (int64_t d = 0; d < D; d++) s += g[d] * o[d];
              delta[r] = s;
            }
            gemm(false, true, R, S, D, 1.0f, qt, ldq, kd + koff, ldk, 0.0f, p.data(), S);  // q·kᵀ
            probabilities(p.data(), R, S, t0, s0, bg, scale,
                          [&](int64_t r) { return ld[(b * T + t0 + r) * Hq + h]; });
            gemm(false, true, R, S, D, 1.0f, gt, ldq, vd + koff, ldk, 0.0f, dp.data(), S);  // dP = dO·Vᵀ
            for (int64_t r = 0; r < R; r++)  // dS = P∘(dP − Δ)·scale (0 where masked, since P is)
              for (int64_t j = 0; j < S; j++)
                dp[r * S + j] = p[r * S + j] * (dp[r * S + j] - delta[r]) * scale;
            gemm(false, false, R, D, S, 1.0f, dp.data(), S, kd + koff, ldk, 1.0f, dqd + qoff,
                 ldq);                                                                       // dQ += dS·K
            gemm(true, false, S, D, R, 1.0f, dp.data(), S, qt, ldq, 1.0f, dkd + koff, ldk);  // dK += dSᵀ·Q
            gemm(true, false, S, D, R, 1.0f, p.data(), S, gt, ldq, 1.0f, dvd + koff, ldk);   // dV += Pᵀ·dO
          }
  }
}

}  // namespace cpu
}  // namespace qtune
