// Sampling: greedy, temperature, top-k (ties kept), top-p (HF's rule), seeded draws whose frequencies
// match the distribution; and the RoPE frequency table's llama3/linear scaling.
#include "model/sampling.h"

#include <cmath>

#include "model/rope_freq.h"
#include "model_test_util.h"

using namespace qtune;
using namespace qtune_test;

static std::vector<float> log_probs(const std::vector<double>& p) {
  std::vector<float> l;
  for (double x : p) l.push_back((float)std::log(x));
  return l;
}

TEST(Sampling, GreedyIsFirstArgmax) {
  std::vector<float> l = {0.1f, 3.0f, -2.0f, 3.0f};
  EXPECT_EQ(argmax(l.data(), 4), 1);
  Sampler s({0.0f, 0, 1.0f, 7});
  for (int i = 0; i < 10; i++) EXPECT_EQ(s.sample(l.data(), 4), 1);
}

TEST(Sampling, TopPKeepsSmallestSetReachingP) {
  std::vector<float> l = log_probs({0.05, 0.5, 0.15, 0.3});
  auto p = sampling_distribution(l.data(), 4, {1.0f, 0, 0.75f, 0});
  EXPECT_NEAR(p[1], 0.5 / 0.8, 1e-6);
  EXPECT_NEAR(p[3], 0.3 / 0.8, 1e-6);
  EXPECT_EQ(p[0], 0.0);
  EXPECT_EQ(p[2], 0.0);
  p = sampling_distribution(l.data(), 4, {1.0f, 0, 0.9f, 0});
  EXPECT_EQ(p[0], 0.0);
  EXPECT_NEAR(p[2], 0.15 / 0.95, 1e-6);
  p = sampling_distribution(l.data(), 4, {1.0f, 0, 0.01f, 0});  // always at least one token
  EXPECT_NEAR(p[1], 1.0, 1e-12);
}

TEST(Sampling, TemperatureThenTopKKeepsTies) {
  std::vector<float> l = {1.0f, 1.0f, 0.0f, 1.0f, -1.0f};
  auto p = sampling_distribution(l.data(), 5, {0.5f, 2, 1.0f, 0});
  EXPECT_NEAR(p[0], 1.0 / 3, 1e-9);  // three tokens tie at the 2nd largest value: all kept
  EXPECT_NEAR(p[3], 1.0 / 3, 1e-9);
  EXPECT_EQ(p[2], 0.0);
  std::vector<float> m = {2.0f, 1.0f, 0.0f};
  p = sampling_distribution(m.data(), 3, {2.0f, 0, 1.0f, 0});  // softmax(m / 2)
  double z = std::exp(1.0) + std::exp(0.5) + 1.0;
  EXPECT_NEAR(p[0], std::exp(1.0) / z, 1e-7);
  EXPECT_NEAR(p[2], 1.0 / z, 1e-7);
}

TEST(Sampling, SeededDrawsFollowTheDistribution) {
  std::vector<float> l = log_probs({0.1, 0.2, 0.3, 0.4});
  Sampler s({1.0f, 0, 1.0f, 42});
  std::vector<int> count(4, 0);
  const int n = 40000;
  std::vector<int32_t> first;
  for (int i = 0; i < n; i++) {
    int32_t t = s.sample(l.data(), 4);
    count[t]++;
    if (i < 20) first.push_back(t);
  }
  for (int i = 0; i < 4; i++) EXPECT_NEAR(count[i] / (double)n, 0.1 * (i + 1), 0.01) << i;  // ~4 sigma
  Sampler again({1.0f, 0, 1.0f, 42});
  for (int i = 0; i < 20; i++) EXPECT_EQ(again.sample(l.data(), 4), first[i]);
}

TEST(Sampling, BadOptions) {
  std::vector<float> l = {0.0f, 1.0f};
  expect_error([&] { sampling_distribution(l.data(), 2, {1.0f, 0, 0.0f, 0}); }, ErrorKind::Usage, {"top_p"});
  expect_error([&] { sampling_distribution(l.data(), 2, {1.0f, -1, 1.0f, 0}); }, ErrorKind::Usage, {"top_k"});
}

TEST(RopeFreq, Llama3ScalingBands) {
  ModelConfig c;
  c.head_dim = 16;
  c.rope_theta = 10000.0;
  std::vector<float> base = rope_inv_freq(c);
  EXPECT_FLOAT_EQ(base[0], 1.0f);
  EXPECT_NEAR(base[4], std::pow(10000.0, -0.5), 1e-8);
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8;
  c.rope_scaling.original_max_position_embeddings = 256;  // high band: wavelength < 64, low band > 256
  std::vector<float> s = rope_inv_freq(c);
  for (int i = 0; i < 8; i++) {
    double wl = 2 * M_PI / base[i];
    if (wl < 64)
      EXPECT_EQ(s[i], base[i]) << i;
    else if (wl > 256)
      EXPECT_NEAR(s[i], base[i] / 8, 1e-9) << i;
    else {  // blended: between the two, linear in 256 / wavelength
      double sm = (256 / wl - 1) / 3;
      EXPECT_NEAR(s[i], (1 - sm) * base[i] / 8 + sm * base[i], 1e-7) << i;
    }
  }
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = 2;
  EXPECT_FLOAT_EQ(rope_inv_freq(c)[3], base[3] / 2);
  c.rope_scaling.type = "yarn";
  expect_error([&] { rope_inv_freq(c); }, ErrorKind::Unsupported, {"yarn", "llama3"});
}
