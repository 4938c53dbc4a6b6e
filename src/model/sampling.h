// Next-token choice from a row of logits, in Hugging Face's order: temperature → top-k → top-p, then a
// draw from the softmax of what is left; temperature <= 0 means greedy (argmax, first index on ties).
// top-k keeps every token whose logit is >= the k-th largest; top-p keeps the smallest set of the most
// likely tokens whose probability sums to >= p (at least one token). The RNG is seeded and platform
// independent (mt19937_64 and a 53-bit uniform of our own), so a seed gives the same tokens everywhere.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace qtune {

struct SamplingOptions {
  float temperature = 0.0f;  // <= 0: greedy
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  uint64_t seed = 0;
};

// Index of the largest logit (the first one on ties).
int32_t argmax(const float* logits, int64_t n);

// The probabilities the sampler draws from (after temperature, top-k, top-p; zeros where filtered),
// f64, summing to 1. Exposed for tests; distribution_into is the same into reused buffers.
std::vector<double> sampling_distribution(const float* logits, int64_t n, const SamplingOptions& opt);

// Buffers the sampler reuses from token to token.
struct SamplingScratch {
  std::vector<float> scores, kth;
  std::vector<uint64_t> order;
};
void distribution_into(const float* logits, int64_t n, const SamplingOptions& opt, SamplingScratch& w,
                       std::vector<double>& p);

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& opt);
  const SamplingOptions& options() const { return opt_; }
  // Picks the next token from logits[n].
  int32_t sample(const float* logits, int64_t n);

 private:
  SamplingOptions opt_;
  std::mt19937_64 rng_;
  SamplingScratch scratch_;
  std::vector<double> p_;
};

}  // namespace qtune
