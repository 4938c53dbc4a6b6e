// Token sampling (see sampling.h). Filtering follows transformers' logits warpers: TopK removes logits
// below the k-th largest; TopP sorts ascending, and removes tokens while the cumulative probability is
// <= 1 − p, always keeping the most likely token.
#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace qtune {

int32_t argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; i++)
    if (logits[i] > logits[best]) best = i;
  return (int32_t)best;
}

std::vector<double> sampling_distribution(const float* logits, int64_t n, const SamplingOptions& opt) {
  if (n <= 0) throw_error(ErrorKind::Usage, "sampling: empty logits");
  if (opt.top_p <= 0.0f || opt.top_p > 1.0f || std::isnan(opt.top_p))
    throw_error(ErrorKind::Usage, "sampling: top_p must be in (0, 1], got ", opt.top_p);
  if (opt.top_k < 0) throw_error(ErrorKind::Usage, "sampling: top_k must be >= 0, got ", opt.top_k);
  std::vector<double> p(n, 0.0);
  if (opt.temperature <= 0.0f) {
    p[argmax(logits, n)] = 1.0;
    return p;
  }
  // Scaled scores of the candidates; -inf marks removed tokens.
  std::vector<double> s(n);
  for (int64_t i = 0; i < n; i++) s[i] = (double)(logits[i] / opt.temperature);
  if (opt.top_k > 0 && opt.top_k < n) {
    std::vector<double> tmp(s);
    std::nth_element(tmp.begin(), tmp.begin() + (opt.top_k - 1), tmp.end(), std::greater<double>());
    double kth = tmp[opt.top_k - 1];
    for (double& x : s)
      if (x < kth) x = -INFINITY;
  }
  double mx = *std::max_element(s.begin(), s.end());
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += (p[i] = std::isinf(s[i]) ? 0.0 : std::exp(s[i] - mx));
  for (double& x : p) x /= sum;
  if (opt.top_p < 1.0f) {
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] < s[b]; });
    double cum = 0, cut = 1.0 - (double)opt.top_p;
    for (int64_t j = 0; j + 1 < n; j++) {  // the last (most likely) token always stays
      cum += p[order[j]];
      if (cum > cut) break;
      p[order[j]] = 0.0;
    }
    double kept = 0;
    for (double x : p) kept += x;
    for (double& x : p) x /= kept;
  }
  return p;
}

Sampler::Sampler(const SamplingOptions& opt) : opt_(opt), rng_(opt.seed) {}

int32_t Sampler::sample(const float* logits, int64_t n) {
  if (opt_.temperature <= 0.0f) return argmax(logits, n);
  std::vector<double> p = sampling_distribution(logits, n, opt_);
  double u = (double)(rng_() >> 11) * (1.0 / 9007199254740992.0);  // [0, 1), 53 bits
  double cum = 0;
  int64_t last = 0;
  for (int64_t i = 0; i < n; i++) {
    if (p[i] <= 0) continue;
    last = i;
    cum += p[i];
    if (u < cum) return (int32_t)i;
  }
  return (int32_t)last;  // u landed in the rounding slack above the final cumulative sum
}

}  // namespace qtune
