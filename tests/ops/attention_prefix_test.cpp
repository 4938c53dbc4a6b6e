// Training attention with prefix rows (attention_forward_train_prefix / attention_backward_prefix) on the
// CPU against a float64 reference written from the definition: query t of sequence b sees the P prefix
// rows of b (with seq_ids: when it belongs to the row's first run) and its own keys s <= t of its run; out =
// Σ softmax(q·k/√D) v; gradients of Σ dout·out for q, k, v and the prefix k, v. MHA and GQA, with and without
// seq_ids (one example + padding).
#include <gtest/gtest.h>

#include <cmath>

#include "op_test_util.h"
#include "ops/attention.h"

using namespace qtune;
using namespace qtune_test;

namespace {

struct Ref {
  std::vector<double> out, dq, dk, dv, dpk, dpv;
};

Ref reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& pk, const Tensor& pv,
              const Tensor& dout, const std::vector<int32_t>* seq) {
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2), P = pk.size(1);
  const int64_t g = Hq / Hkv;
  std::vector<double> Q = to_f64(q), K = to_f64(k), V = to_f64(v), PK = to_f64(pk), PV = to_f64(pv),
                      G = to_f64(dout);
  Ref r;
  r.out.assign(Q.size(), 0);
  r.dq.assign(Q.size(), 0);
  r.dk.assign(K.size(), 0);
  r.dv.assign(V.size(), 0);
  r.dpk.assign(PK.size(), 0);
  r.dpv.assign(PV.size(), 0);
  const double scale = 1.0 / std::sqrt((double)D);
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < Hq; h++) {
        const int64_t hk = h / g;
        // Visible keys: prefix rows j < P, then own keys s (index P + s).
        std::vector<const double*> ks, vs;
        std::vector<double*> dks, dvs;
        const bool sees_prefix = !seq || (*seq)[b * T + t] == (*seq)[b * T];  // the row's first run
        for (int64_t j = 0; j < P && sees_prefix; j++) {
          int64_t o = ((b * P + j) * Hkv + hk) * D;
          ks.push_back(&PK[o]);
          vs.push_back(&PV[o]);
          dks.push_back(&r.dpk[o]);
          dvs.push_back(&r.dpv[o]);
        }
        for (int64_t s = 0; s <= t; s++) {
          if (seq && (*seq)[b * T + s] != (*seq)[b * T + t]) continue;
          int64_t o = ((b * T + s) * Hkv + hk) * D;
          ks.push_back(&K[o]);
          vs.push_back(&V[o]);
          dks.push_back(&r.dk[o]);
          dvs.push_back(&r.dv[o]);
        }
        const int64_t qo = ((b * T + t) * Hq + h) * D;
        const size_t n = ks.size();
        std::vector<double> p(n);
        double mx = -1e300, sum = 0;
        for (size_t j = 0; j < n; j++) {
          double dot = 0;
          for (int64_t d = 0; d < D; d++) dot += Q[qo + d] * ks[j][d];
          p[j] = dot * scale;
          mx = std::max(mx, p[j]);
        }
        for (size_t j = 0; j < n; j++) sum += (p[j] = std::exp(p[j] - mx));
        for (size_t j = 0; j < n; j++) p[j] /= sum;
        for (size_t j = 0; j < n; j++)
          for (int64_t d = 0; d < D; d++) r.out[qo + d] += p[j] * vs[j][d];
        std::vector<double> dp(n);
        double delta = 0;
        for (size_t j = 0; j < n; j++) {
          for (int64_t d = 0; d < D; d++) dp[j] += G[qo + d] * vs[j][d];
          delta += p[j] * dp[j];
        }
        for (size_t j = 0; j < n; j++) {
          const double ds = p[j] * (dp[j] - delta) * scale;
          for (int64_t d = 0; d < D; d++) {
            r.dq[qo + d] += ds * ks[j][d];
            dks[j][d] += ds * Q[qo + d];
            dvs[j][d] += p[j] * G[qo + d];
          }
        }
      }
  return r;
}

void check(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int64_t P, bool padded) {
  Tensor q = randn({B, T, Hq, D}), k = randn({B, T, Hkv, D}), v = randn({B, T, Hkv, D});
  Tensor pk = randn({B, P, Hkv, D}), pv = randn({B, P, Hkv, D}), dout = randn({B, T, Hq, D});
  std::vector<int32_t> seq(B * T, 3);
  for (int64_t b = 0; b < B; b++)  // an example of T − 2 − b tokens, then padding with its own id
    for (int64_t t = T - 2 - b; t < T; t++) seq[b * T + t] = 9;
  Tensor seq_t = Tensor::from_i32(seq, {B, T});
  const Tensor* seq_ids = padded ? &seq_t : nullptr;
  Tensor out = Tensor::empty({B, T, Hq, D}, DType::F32), lse = Tensor::empty({B, T, Hq}, DType::F32);
  Tensor dpk = randn({B, P, Hkv, D}), dpv = randn({B, P, Hkv, D});  // accumulated into (+=)
  std::vector<double> dpk0 = to_f64(dpk), dpv0 = to_f64(dpv);
  AttentionPrefix pre{pk, pv, &dpk, &dpv};
  attention_forward_train_prefix(out, lse, q, k, v, pre, seq_ids);
  Tensor dq = Tensor::zeros(q.shape(), DType::F32), dk = Tensor::zeros(k.shape(), DType::F32),
         dv = Tensor::zeros(v.shape(), DType::F32);
  attention_backward_prefix(dq, dk, dv, dout, q, k, v, out, lse, pre, seq_ids);
  Ref r = reference(q, k, v, pk, pv, dout, padded ? &seq : nullptr);
  for (size_t i = 0; i < r.dpk.size(); i++) {
    r.dpk[i] += dpk0[i];
    r.dpv[i] += dpv0[i];
  }
  const double tol = 2e-6;
  EXPECT_LT(rel_err(out, r.out), tol);
  EXPECT_LT(rel_err(dq, r.dq), tol);
  EXPECT_LT(rel_err(dk, r.dk), tol);
  EXPECT_LT(rel_err(dv, r.dv), tol);
  EXPECT_LT(rel_err(dpk, r.dpk), tol);
  EXPECT_LT(rel_err(dpv, r.dpv), tol);
}

}  // namespace

TEST(AttentionPrefix, MatchesFloat64Reference) {
  check(2, 9, 4, 4, 8, 3, false);    // MHA
  check(2, 70, 4, 2, 16, 5, false);  // GQA, more rows than a CPU tile
  check(3, 11, 6, 2, 8, 1, true);    // one example + padding per row
}

TEST(AttentionPrefix, RejectsMismatchedPrefix) {
  Tensor q = randn({1, 4, 2, 8}), k = randn({1, 4, 2, 8}), v = randn({1, 4, 2, 8});
  Tensor out = Tensor::empty(q.shape(), DType::F32), lse = Tensor::empty({1, 4, 2}, DType::F32);
  AttentionPrefix pre{randn({1, 3, 2, 4}), randn({1, 3, 2, 4})};
  expect_error([&] { attention_forward_train_prefix(out, lse, q, k, v, pre); }, ErrorKind::Shape,
               {"attention_forward_train_prefix", "prefix.k"});
}
