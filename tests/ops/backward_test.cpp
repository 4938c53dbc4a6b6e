// Every backward op of the Llama block against float64 central finite differences of an independent
// float64 forward (written here, loops only): embedding, RMSNorm, RoPE, SwiGLU, linear (dx, dw, db),
// causal GQA attention (2 query heads per kv head, odd sizes, packed sequences). Also the training
// attention forward and its log-sum-exp against the f64 forward, and argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backward_test_util.h"
#include "ops/ops.h"

using namespace qtune;
using namespace qtune_test;

namespace {

constexpr double kTol = 1e-4;  // f32 analytic gradient vs f64 finite differences (relative norm)

Tensor zeros_like(const Tensor& t) {
  return Tensor::zeros(t.shape(), DType::F32);
}

Vec rmsnorm_ref(const Vec& x, const Vec& w, int64_t C, double eps) {
  Vec y(x.size());
  for (size_t n = 0; n < x.size() / C; n++) {
    double ss = 0;
    for (int64_t c = 0; c < C; c++) ss += x[n * C + c] * x[n * C + c];
    double r = 1 / std::sqrt(ss / C + eps);
    for (int64_t c = 0; c < C; c++) y[n * C + c] = x[n * C + c] * r * w[c];
  }
  return y;
}

Vec rope_ref(const Vec& x, const std::vector<int32_t>& pos, const std::vector<float>& inv, int64_t H,
             int64_t D) {
  Vec y(x.size());
  int64_t half = D / 2;
  for (size_t n = 0; n < pos.size(); n++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < half; i++) {
        double a = (float)pos[n] * inv[i];  // the f32 angle, as the op
        size_t o = (n * H + h) * D;
        double x1 = x[o + i], x2 = x[o + i + half];
        y[o + i] = x1 * std::cos(a) - x2 * std::sin(a);
        y[o + i + half] = x2 * std::cos(a) + x1 * std::sin(a);
      }
  return y;
}

// Causal GQA attention in f64. q [B, T, Hq, D], k/v [B, T, Hkv, D]; seq (may be empty) [B, T].
Vec attention_ref(const Vec& q, const Vec& k, const Vec& v, int64_t B, int64_t T, int64_t Hq, int64_t Hkv,
                  int64_t D, const std::vector<int32_t>& seq, Vec* lse = nullptr) {
  Vec out(q.size(), 0.0);
  if (lse) lse->assign(B * T * Hq, 0.0);
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < Hq; h++) {
        int64_t hk = h / (Hq / Hkv);
        std::vector<double> sc;
        std::vector<int64_t> keys;
        for (int64_t s = 0; s <= t; s++) {
          if (!seq.empty() && seq[b * T + s] != seq[b * T + t]) continue;
          double d = 0;
          for (int64_t j = 0; j < D; j++)
            d += q[((b * T + t) * Hq + h) * D + j] * k[((b * T + s) * Hkv + hk) * D + j];
          sc.push_back(d / std::sqrt((double)D));
          keys.push_back(s);
        }
        double mx = -1e300, sum = 0;
        for (double s : sc) mx = std::max(mx, s);
        for (double s : sc) sum += std::exp(s - mx);
        if (lse) (*lse)[(b * T + t) * Hq + h] = mx + std::log(sum);
        for (size_t i = 0; i < keys.size(); i++) {
          double p = std::exp(sc[i] - mx) / sum;
          for (int64_t j = 0; j < D; j++)
            out[((b * T + t) * Hq + h) * D + j] += p * v[((b * T + keys[i]) * Hkv + hk) * D + j];
        }
      }
  return out;
}

}  // namespace

TEST(Backward, Embedding) {
  int64_t V = 11, C = 7, N = 9;
  std::vector<int32_t> id = {3, 0, 10, 3, 5, 3, 0, 7, 1};  // repeats sum
  Tensor ids = Tensor::from_i32(id, {N}), table = randn({V, C}), R = randn({N, C});
  Tensor dtable = randn({V, C});  // accumulates onto existing values
  Vec before = to_f64(dtable);
  embedding_backward(dtable, ids, R);
  Vec r = to_f64(R);
  auto L = [&](const Vec& tab) {
    double s = 0;
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = 0; c < C; c++) s += tab[id[n] * C + c] * r[n * C + c];
    return s;
  };
  Vec want = finite_diff(L, to_f64(table));
  for (size_t i = 0; i < want.size(); i++) want[i] += before[i];
  EXPECT_LT(grad_err("embedding dtable (+= onto random)", dtable, want), kTol);
  std::vector<int32_t> bad = {0, 11};
  expect_error(
      [&] {
        embedding_backward(dtable, Tensor::from_i32(bad, {2}), randn({2, C}));
      },
      ErrorKind::Shape, {"embedding_backward", "token id 11", "position 1"});
}

TEST(Backward, RmsNorm) {
  for (int64_t C : {5, 33}) {
    int64_t N = 7;
    float eps = 1e-5f;
    Tensor x = randn({N, C}, 1.0f, 0.3f), w = randn({C}, 0.5f, 1.0f), R = randn({N, C});
    Tensor dx = zeros_like(x), dw = zeros_like(w);
    rmsnorm_backward(dx, &dw, R, x, w, eps);
    Vec xv = to_f64(x), wv = to_f64(w), r = to_f64(R);
    EXPECT_LT(grad_err("rmsnorm dx", dx,
                       finite_diff([&](const Vec& a) { return dot(rmsnorm_ref(a, wv, C, eps), r); }, xv)),
              kTol);
    EXPECT_LT(grad_err("rmsnorm dweight", dw,
                       finite_diff([&](const Vec& a) { return dot(rmsnorm_ref(xv, a, C, eps), r); }, wv)),
              kTol);
    Tensor dx2 = zeros_like(x);
    rmsnorm_backward(dx2, nullptr, R, x, w, eps);  // dweight not asked: same dx
    EXPECT_EQ(dx2.to_f32_vector(), dx.to_f32_vector());
  }
  // Many rows: the threaded path with per-thread dweight partial sums.
  int64_t N = 1500, C = 48;
  Tensor x = randn({N, C}), w = randn({C}), R = randn({N, C});
  Tensor dx = zeros_like(x), dw = zeros_like(w);
  rmsnorm_backward(dx, &dw, R, x, w, 1e-6f);
  Vec xv = to_f64(x), wv = to_f64(w), r = to_f64(R);
  Vec want_dw(C, 0.0);
  for (int64_t n = 0; n < N; n++) {
    double ss = 0;
    for (int64_t c = 0; c < C; c++) ss += xv[n * C + c] * xv[n * C + c];
    double rr = 1 / std::sqrt(ss / C + 1e-6);
    for (int64_t c = 0; c < C; c++) want_dw[c] += r[n * C + c] * xv[n * C + c] * rr;
  }
  EXPECT_LT(grad_err("rmsnorm dweight (1500 rows, analytic f64)", dw, want_dw), kTol);
  expect_error(
      [&] {
        rmsnorm_backward(dx, &dw, randn({N, C + 1}), x, w, 1e-6f);
      },
      ErrorKind::Shape, {"rmsnorm_backward", "'dout'"});
}

TEST(Backward, Rope) {
  int64_t N = 5, H = 3, D = 10;
  std::vector<int32_t> pos = {0, 1, 7, 300, 2};
  std::vector<float> inv(D / 2);
  for (int64_t i = 0; i < D / 2; i++) inv[i] = std::pow(10000.0f, -2.0f * i / D);
  Tensor x = randn({N, H, D}), R = randn({N, H, D});
  Tensor g = R.clone();
  rope_backward(g, Tensor::from_i32(pos, {N}), Tensor::from_f32(inv, {D / 2}));
  Vec r = to_f64(R);
  Vec want = finite_diff([&](const Vec& a) { return dot(rope_ref(a, pos, inv, H, D), r); }, to_f64(x));
  EXPECT_LT(grad_err("rope dx", g, want), kTol);
}

TEST(Backward, SwiGLU) {
  int64_t N = 6, F = 13;
  Tensor gate = randn({N, F}, 2.0f), up = randn({N, F}), R = randn({N, F});
  Tensor dg = zeros_like(gate), du = zeros_like(up);
  swiglu_backward(dg, du, R, gate, up);
  Vec gv = to_f64(gate), uv = to_f64(up), r = to_f64(R);
  auto f = [&](const Vec& g, const Vec& u) {
    double s = 0;
    for (size_t i = 0; i < g.size(); i++) s += g[i] / (1 + std::exp(-g[i])) * u[i] * r[i];
    return s;
  };
  EXPECT_LT(grad_err("swiglu dgate", dg, finite_diff([&](const Vec& a) { return f(a, uv); }, gv)), kTol);
  EXPECT_LT(grad_err("swiglu dup", du, finite_diff([&](const Vec& a) { return f(gv, a); }, uv)), kTol);
  // accumulate = false overwrites: the same values from outputs full of garbage (NaN never read).
  Tensor og = randn({N, F}), ou = randn({N, F});
  og.data<float>()[0] = ou.data<float>()[3] = std::nanf("");
  swiglu_backward(og, ou, R, gate, up, false);
  EXPECT_EQ(og.to_f32_vector(), dg.to_f32_vector());
  EXPECT_EQ(ou.to_f32_vector(), du.to_f32_vector());
}

TEST(Backward, Linear) {
  for (int64_t N : {1, 7, 300}) {  // 300 rows: the threaded GEMM split
    int64_t I = 9, O = 5;
    Tensor x = randn({N, I}), w = randn({O, I}), b = randn({O}), R = randn({N, O});
    Tensor dx = zeros_like(x), dw = zeros_like(w), db = zeros_like(b);
    linear_backward(&dx, &dw, &db, R, x, w);
    Vec xv = to_f64(x), wv = to_f64(w), bv = to_f64(b), r = to_f64(R);
    auto f = [&](const Vec& X, const Vec& W, const Vec& B) {
      double s = 0;
      for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++) {
          double y = B[o];
          for (int64_t i = 0; i < I; i++) y += X[n * I + i] * W[o * I + i];
          s += y * r[n * O + o];
        }
      return s;
    };
    if (N <= 7) {  // finite differences on the small sizes
      EXPECT_LT(grad_err("linear dx", dx, finite_diff([&](const Vec& a) { return f(a, wv, bv); }, xv)), kTol);
      EXPECT_LT(grad_err("linear dw", dw, finite_diff([&](const Vec& a) { return f(xv, a, bv); }, wv)), kTol);
      EXPECT_LT(grad_err("linear db", db, finite_diff([&](const Vec& a) { return f(xv, wv, a); }, bv)), kTol);
    } else {  // the exact f64 products
      Vec want(O * I, 0.0);
      for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++)
          for (int64_t i = 0; i < I; i++) want[o * I + i] += r[n * O + o] * xv[n * I + i];
      EXPECT_LT(grad_err("linear dw (300 rows, analytic f64)", dw, want), kTol);
    }
    // Only dx (a frozen weight): the same dx, accumulated onto what was there.
    Tensor dx2 = dx.clone();
    linear_backward(&dx2, nullptr, nullptr, R, x, w);
    std::vector<float> a = dx.to_f32_vector(), c = dx2.to_f32_vector();
    for (size_t i = 0; i < a.size(); i++) EXPECT_NEAR(c[i], 2 * a[i], 1e-5 * (1 + std::fabs(a[i])));
  }
  Tensor x = randn({4, 9}), w = randn({5, 9});
  expect_error(
      [&] {
        linear_backward(nullptr, nullptr, nullptr, randn({3, 5}), x, w);
      },
      ErrorKind::Shape, {"linear_backward", "'dy'", "has 3 rows"});
}

namespace {

struct AttnCase {
  int64_t B, T, Hq, Hkv, D;
  std::vector<int32_t> seq;  // empty: plain causal
};

void check_attention(const AttnCase& c, const char* label) {
  int64_t B = c.B, T = c.T, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
  Tensor q = randn({B, T, Hq, D}), k = randn({B, T, Hkv, D}), v = randn({B, T, Hkv, D});
  Tensor R = randn({B, T, Hq, D});
  Tensor seq = c.seq.empty() ? Tensor() : Tensor::from_i32(c.seq, {B, T});
  const Tensor* sp = c.seq.empty() ? nullptr : &seq;
  Tensor out = Tensor::empty(q.shape(), DType::F32), lse = Tensor::empty({B, T, Hq}, DType::F32);
  attention_forward_train(out, lse, q, k, v, sp);
  Vec qv = to_f64(q), kv = to_f64(k), vv = to_f64(v), r = to_f64(R), want_lse;
  Vec want_out = attention_ref(qv, kv, vv, B, T, Hq, Hkv, D, c.seq, &want_lse);
  EXPECT_LT(rel_err(out, want_out), 1e-5) << label;
  EXPECT_LT(rel_err(lse, want_lse), 1e-5) << label;
  Tensor dq = zeros_like(q), dk = zeros_like(k), dv = zeros_like(v);
  attention_backward(dq, dk, dv, R, q, k, v, out, lse, sp);
  auto L = [&](const Vec& Q, const Vec& K, const Vec& V) {
    return dot(attention_ref(Q, K, V, B, T, Hq, Hkv, D, c.seq), r);
  };
  std::printf(" %s\n", label);
  EXPECT_LT(grad_err("attention dq", dq, finite_diff([&](const Vec& a) { return L(a, kv, vv); }, qv)), kTol);
  EXPECT_LT(grad_err("attention dk", dk, finite_diff([&](const Vec& a) { return L(qv, a, vv); }, kv)), kTol);
  EXPECT_LT(grad_err("attention dv", dv, finite_diff([&](const Vec& a) { return L(qv, kv, a); }, vv)), kTol);
}

}  // namespace

TEST(Backward, AttentionGQA) {
  check_attention({2, 5, 4, 2, 6, {}}, "B2 T5 Hq4 Hkv2 D6 (2 q heads per kv head)");
  check_attention({1, 7, 3, 1, 5, {}}, "B1 T7 Hq3 Hkv1 D5 (MQA, odd sizes)");
  check_attention({1, 6, 2, 2, 4, {}}, "B1 T6 Hq2 Hkv2 D4 (MHA)");
}

TEST(Backward, AttentionPackedSequences) {
  // Two rows, each packing examples of lengths 3+4 and 2+1+4: no attention across examples.
  check_attention({2, 7, 4, 2, 4, {0, 0, 0, 1, 1, 1, 1, 5, 5, 6, 7, 7, 7, 7}}, "packed B2 T7 Hq4 Hkv2 D4");
  // T = 150 spans three 64-row query tiles; examples of 50, 40 (crossing a tile edge) and 60 tokens.
  std::vector<int32_t> runs(150);
  for (int t = 0; t < 150; t++) runs[t] = t < 50 ? 0 : t < 90 ? 1 : 2;
  check_attention({1, 150, 2, 1, 4, runs}, "packed B1 T150 Hq2 Hkv1 D4 (3 query tiles)");
  check_attention({1, 130, 2, 1, 3, {}}, "causal B1 T130 Hq2 Hkv1 D3 (3 query tiles)");
  // Packed output equals each example attended alone.
  int64_t Hq = 2, Hkv = 1, D = 4;
  Tensor q = randn({1, 5, Hq, D}), k = randn({1, 5, Hkv, D}), v = randn({1, 5, Hkv, D});
  Tensor out = Tensor::empty(q.shape(), DType::F32), lse = Tensor::empty({1, 5, Hq}, DType::F32);
  Tensor seq = Tensor::from_i32({4, 4, 9, 9, 9}, {1, 5});
  attention_forward_train(out, lse, q, k, v, &seq);
  Tensor q2 = q.reshape({5, Hq * D}).slice0(2, 3).clone().reshape({1, 3, Hq, D});
  Tensor k2 = k.reshape({5, Hkv * D}).slice0(2, 3).clone().reshape({1, 3, Hkv, D});
  Tensor v2 = v.reshape({5, Hkv * D}).slice0(2, 3).clone().reshape({1, 3, Hkv, D});
  Tensor out2 = Tensor::empty(q2.shape(), DType::F32), lse2 = Tensor::empty({1, 3, Hq}, DType::F32);
  attention_forward_train(out2, lse2, q2, k2, v2);
  std::vector<float> a = out.to_f32_vector(), b = out2.to_f32_vector();
  for (size_t i = 0; i < b.size(); i++) EXPECT_EQ(a[2 * Hq * D + i], b[i]);
}

TEST(Backward, AttentionErrors) {
  Tensor q = randn({1, 4, 3, 8}), k = randn({1, 4, 2, 8}), v = randn({1, 4, 2, 8});
  Tensor out = Tensor::empty(q.shape(), DType::F32), lse = Tensor::empty({1, 4, 3}, DType::F32);
  expect_error([&] { attention_forward_train(out, lse, q, k, v); }, ErrorKind::Shape,
               {"attention_forward_train", "query heads 3", "kv heads 2"});
  Tensor q2 = randn({1, 4, 2, 8}), bad_lse = Tensor::empty({1, 4}, DType::F32);
  Tensor out2 = Tensor::empty(q2.shape(), DType::F32);
  expect_error([&] { attention_forward_train(out2, bad_lse, q2, k, v); }, ErrorKind::Shape,
               {"attention_forward_train", "'lse'", "[1, 4, 2]"});
  Tensor seq = Tensor::from_i32({0, 0, 1}, {1, 3});
  Tensor lse2 = Tensor::empty({1, 4, 2}, DType::F32);
  expect_error([&] { attention_forward_train(out2, lse2, q2, k, v, &seq); }, ErrorKind::Shape,
               {"attention_forward_train", "'seq_ids'", "[1, 4]"});
}
