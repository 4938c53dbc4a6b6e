// The LLaMA-Adapter prompt attention op (peft/adaption_attention.h) on the CPU against a float64 reference
// (tests/peft/adaption_reference.h): the forward, and the backward against float64 central differences of
// that reference, for GQA, MHA and one prompt row; accumulation into dq and dgate; shape errors.
#include "peft/adaption_attention.h"

#include <gtest/gtest.h>

#include <random>

#include "adaption_reference.h"
#include "core/error.h"

using namespace qtune;
namespace ref = adaption_ref;

namespace {

std::vector<double> randn(size_t n, std::mt19937& rng, double scale = 1.0) {
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<double> x(n);
  for (double& v : x) v = nd(rng);
  return x;
}

Tensor f32(const std::vector<double>& x, const Shape& s) {
  std::vector<float> f(x.begin(), x.end());
  return Tensor::from_f32(f, s);
}

}  // namespace

TEST(AdaptionAttention, MatchesFloat64ForwardAndBackward) {
  for (ref::Dims d : {ref::Dims{7, 6, 2, 8, 5}, ref::Dims{4, 3, 3, 16, 10}, ref::Dims{5, 4, 1, 8, 1}}) {
    SCOPED_TRACE(::testing::Message() << "N " << d.N << " Hq " << d.Hq << " Hkv " << d.Hkv << " Lp " << d.Lp);
    std::mt19937 rng(d.N * 31 + d.Hq);
    const std::vector<double> q = randn((size_t)d.N * d.Hq * d.D, rng),
                              k = randn((size_t)d.Lp * d.Hkv * d.D, rng),
                              v = randn((size_t)d.Lp * d.Hkv * d.D, rng),
                              dout = randn((size_t)d.N * d.Hq * d.D, rng);
    const double g = 0.8;
    const Shape qs{d.N, d.Hq, d.D}, ks{d.Lp, d.Hkv, d.D};
    Tensor out = Tensor::empty(qs, DType::F32), probs = Tensor::empty({d.N, d.Hq, d.Lp}, DType::F32);
    adaption_attention_forward(out, probs, f32(q, qs), f32(k, ks), f32(v, ks), (float)g);
    const double ef = ref::rel(out.to_f32_vector(), ref::forward(d, q, k, v, g));
    std::vector<double> dq, dk, dv;
    double dg;
    ref::backward_fd(d, q, k, v, g, dout, dq, dk, dv, dg);
    // dq and dgate accumulate: start them at known values.
    Tensor tdq = Tensor::from_f32(std::vector<float>(q.size(), 0.5f), qs),
           tdg = Tensor::from_f32({0.25f}, {1});
    Tensor tdk = Tensor::empty(ks, DType::F32), tdv = Tensor::empty(ks, DType::F32);
    adaption_attention_backward(tdq, tdk, tdv, &tdg, f32(dout, qs), f32(q, qs), f32(k, ks), f32(v, ks), probs,
                                (float)g);
    for (double& x : dq) x += 0.5;
    const double eq = ref::rel(tdq.to_f32_vector(), dq),
                 ek = d.Lp > 1 ? ref::rel(tdk.to_f32_vector(), dk) : 0.0,
                 ev = ref::rel(tdv.to_f32_vector(), dv);
    const double eg = std::fabs(tdg.to_f32_vector()[0] - 0.25 - dg) / std::fabs(dg);
    std::printf("forward %.1e, dq %.1e, dk %.1e (0: one row), dv %.1e, dgate %.1e\n", ef, eq, ek, ev, eg);
    EXPECT_LT(ef, 1e-6);
    EXPECT_LT(eq, 1e-5);
    EXPECT_LT(ev, 1e-5);
    EXPECT_LT(eg, 1e-5);
    if (d.Lp > 1) {
      EXPECT_LT(ek, 1e-5);
    } else {  // one prompt row: the softmax is 1 whatever the key, so dk is zero
      for (float x : tdk.to_f32_vector()) EXPECT_LT(std::fabs(x), 1e-6);
    }
  }
}

TEST(AdaptionAttention, ShapeErrorsNameTheTensors) {
  Tensor q = Tensor::zeros({2, 4, 8}, DType::F32), k = Tensor::zeros({3, 3, 8}, DType::F32);
  Tensor out = Tensor::zeros({2, 4, 8}, DType::F32), probs = Tensor::zeros({2, 4, 3}, DType::F32);
  try {
    adaption_attention_forward(out, probs, q, k, k, 1.0f);  // 4 q heads over 3 kv heads
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Shape);
    EXPECT_NE(std::string(e.what()).find("Hq a multiple of Hkv"), std::string::npos) << e.what();
  }
}
