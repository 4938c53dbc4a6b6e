// attention_forward on the CPU against a float64 reference: GQA, batch 2, a query offset into a KV cache
// whose rows past kv_len hold NaN (they must never be read), and the argument checks.
#include "ops/attention.h"

#include "op_test_util.h"

using namespace qtune;
using namespace qtune_test;

static std::vector<double> ref_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t off) {
  int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Smax = k.size(1), Hkv = k.size(2);
  auto qd = to_f64(q), kd = to_f64(k), vd = to_f64(v);
  std::vector<double> out(qd.size());
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < Hq; h++) {
        int64_t hk = h / (Hq / Hkv), S = off + t + 1;
        std::vector<double> p(S);
        double mx = -1e300, sum = 0;
        for (int64_t s = 0; s < S; s++) {
          double dot = 0;
          for (int64_t d = 0; d < D; d++)
            dot += qd[((b * T + t) * Hq + h) * D + d] * kd[((b * Smax + s) * Hkv + hk) * D + d];
          p[s] = dot / std::sqrt((double)D);
          mx = std::max(mx, p[s]);
        }
        for (double& x : p) sum += (x = std::exp(x - mx));
        for (int64_t d = 0; d < D; d++) {
          double acc = 0;
          for (int64_t s = 0; s < S; s++) acc += p[s] * vd[((b * Smax + s) * Hkv + hk) * D + d];
          out[((b * T + t) * Hq + h) * D + d] = acc / sum;
        }
      }
  return out;
}

TEST(Attention, GqaCausalWithCacheOffset) {
  struct Case {
    int64_t B, T, Hq, Hkv, D, off, Smax;
  };
  for (Case c : {Case{2, 5, 4, 2, 16, 3, 12}, Case{1, 1, 8, 2, 8, 9, 10}, Case{1, 7, 3, 3, 32, 0, 7},
                 Case{2, 9, 6, 1, 64, 0, 16}}) {
    Tensor q = randn({c.B, c.T, c.Hq, c.D}, 2.0f);
    Tensor k = randn({c.B, c.Smax, c.Hkv, c.D}), v = randn({c.B, c.Smax, c.Hkv, c.D});
    int64_t kv_len = c.off + c.T;
    // Rows past kv_len are garbage: NaN must not leak into the output.
    for (int64_t b = 0; b < c.B; b++)
      for (int64_t i = kv_len * c.Hkv * c.D; i < c.Smax * c.Hkv * c.D; i++) {
        k.data<float>()[b * c.Smax * c.Hkv * c.D + i] = NAN;
        v.data<float>()[b * c.Smax * c.Hkv * c.D + i] = NAN;
      }
    Tensor out = Tensor::empty(q.shape(), DType::F32);
    attention_forward(out, q, k, v, c.off, kv_len);
    EXPECT_LT(rel_err(out, ref_attention(q, k, v, c.off)), 1e-5)
        << "B" << c.B << " T" << c.T << " off" << c.off;
  }
}

TEST(Attention, FirstQueryCopiesFirstValue) {
  // Query 0 at position 0 sees only key 0: the output is v[0] whatever q is.
  Tensor q = randn({1, 2, 2, 4}, 5.0f), k = randn({1, 4, 1, 4}), v = randn({1, 4, 1, 4});
  Tensor out = Tensor::empty(q.shape(), DType::F32);
  attention_forward(out, q, k, v, 0, 2);
  for (int h = 0; h < 2; h++)
    for (int d = 0; d < 4; d++) EXPECT_EQ(out.data<float>()[h * 4 + d], v.data<float>()[d]);
}

TEST(Attention, BadArguments) {
  Tensor q = randn({1, 3, 4, 8}), k = randn({1, 6, 3, 8}), v = randn({1, 6, 3, 8});
  Tensor out = Tensor::empty(q.shape(), DType::F32);
  expect_error([&] { attention_forward(out, q, k, v, 0, 3); }, ErrorKind::Shape,
               {"query heads 4", "multiple of kv heads 3"});
  Tensor k2 = randn({1, 6, 2, 8}), v2 = randn({1, 6, 2, 8});
  expect_error([&] { attention_forward(out, q, k2, v2, 4, 6); }, ErrorKind::Shape,
               {"q_offset + T (7)", "kv_len (6)"});
  Tensor v3 = randn({1, 6, 2, 4});
  expect_error([&] { attention_forward(out, q, k2, v3, 0, 3); }, ErrorKind::Shape, {"'v'", "[1, 6, 2, 8]"});
}
