// Sampling: greedy, temperature, top-k (ties kept), top-p (HF's rule), seeded draws whose frequencies
// match the distribution; and the RoPE frequency table's llama3/linear scaling.
#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

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

// HF's warpers written the plain way, as the reference: top-k by a full sort, top-p by a stable ascending
// sort of every token and the cumulative probability from the least likely up.
static std::vector<double> reference_distribution(const std::vector<float>& logits, float T, int k,
                                                  float top_p) {
  const int64_t n = (int64_t)logits.size();
  std::vector<double> s(n), p(n, 0.0);
  for (int64_t i = 0; i < n; i++) s[i] = (double)(logits[i] / T);
  if (k > 0 && k < n) {
    std::vector<double> sorted(s);
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    for (double& x : s)
      if (x < sorted[k - 1]) x = -INFINITY;
  }
  const double mx = *std::max_element(s.begin(), s.end());
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += (p[i] = std::isinf(s[i]) ? 0.0 : std::exp(s[i] - mx));
  for (double& x : p) x /= sum;
  if (top_p < 1.0f) {
    std::vector<int64_t> order(n);
    for (int64_t i = 0; i < n; i++) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] < s[b]; });
    double cum = 0;
    for (int64_t j = 0; j + 1 < n; j++) {
      cum += p[order[j]];
      if (cum > 1.0 - (double)top_p) break;
      p[order[j]] = 0.0;
    }
    double kept = 0;
    for (double x : p) kept += x;
    for (double& x : p) x /= kept;
  }
  return p;
}

TEST(Sampling, WarpersEqualThePlainWayOnLargeVocabularies) {
  std::mt19937 g(3);
  int cases = 0;
  for (int64_t n : {7, 1000, 32000, 128256}) {
    for (int ties = 0; ties < 2; ties++) {
      std::normal_distribution<float> d(0.0f, ties ? 2.0f : 4.0f);
      std::vector<float> l((size_t)n);
      for (float& x : l) x = ties ? std::round(d(g)) : d(g);  // rounded: many equal scores at every cut
      for (float T : {0.6f, 1.0f, 1.3f})
        for (int k : {0, 1, 5, 50, 2000})
          for (float top_p : {1.0f, 0.99f, 0.9f, 0.5f, 0.05f}) {
            std::vector<double> got = sampling_distribution(l.data(), n, {T, k, top_p, 0});
            std::vector<double> want = reference_distribution(l, T, k, top_p);
            int64_t differ = 0;
            double worst = 0;
            for (int64_t i = 0; i < n; i++) {
              differ += (got[i] > 0) != (want[i] > 0);
              worst = std::max(worst, std::fabs(got[i] - want[i]));
            }
            EXPECT_EQ(differ, 0) << "n " << n << " T " << T << " k " << k << " p " << top_p << " ties "
                                 << ties;
            EXPECT_LE(worst, 1e-12) << "n " << n << " T " << T << " k " << k << " p " << top_p;
            cases++;
          }
    }
  }
  std::printf(
      "[ measured ] sampling: %d (vocabulary, temperature, top-k, top-p) cases keep the plain way's tokens\n",
      cases);
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
