// Token sampling (see sampling.h). Filtering follows transformers' logits warpers: TopK removes logits
// below the k-th largest; TopP sorts ascending, and removes tokens while the cumulative probability is
// <= 1 − p, always keeping the most likely token.
#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/error.h"

namespace qtune {

int32_t argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; i++)
    if (logits[i] > logits[best]) best = i;
  return (int32_t)best;
}

// The distribution into p, with w's buffers reused across calls (a token's worth of work allocates nothing
// once they have grown to the vocabulary).
void distribution_into(const float* logits, int64_t n, const SamplingOptions& opt, SamplingScratch& w,
                       std::vector<double>& p) {
  if (n <= 0) throw_error(ErrorKind::Usage, "sampling: empty logits");
  if (opt.top_p <= 0.0f || opt.top_p > 1.0f || std::isnan(opt.top_p))
    throw_error(ErrorKind::Usage, "sampling: top_p must be in (0, 1], got ", opt.top_p);
  if (opt.top_k < 0) throw_error(ErrorKind::Usage, "sampling: top_k must be >= 0, got ", opt.top_k);
  p.assign((size_t)n, 0.0);
  if (opt.temperature <= 0.0f) {
    p[argmax(logits, n)] = 1.0;
    return;
  }
  // Scaled scores; with top-k only those >= the k-th largest stay candidates.
  std::vector<float>& s = w.scores;
  s.resize((size_t)n);
  for (int64_t i = 0; i < n; i++) s[i] = logits[i] / opt.temperature;
  float kth = -INFINITY;
  if (opt.top_k > 0 && opt.top_k < n) {
    std::vector<float>& h = w.kth;
    if (opt.top_k <= 1024) {  // the k largest in a min-heap: most scores take one compare with its top
      h.assign(s.begin(), s.begin() + opt.top_k);
      std::make_heap(h.begin(), h.end(), std::greater<float>());
      for (int64_t i = opt.top_k; i < n; i++)
        if (s[i] > h.front()) {
          std::pop_heap(h.begin(), h.end(), std::greater<float>());
          h.back() = s[i];
          std::push_heap(h.begin(), h.end(), std::greater<float>());
        }
      kth = h.front();
    } else {
      h.assign(s.begin(), s.end());
      std::nth_element(h.begin(), h.begin() + (opt.top_k - 1), h.end(), std::greater<float>());
      kth = h[opt.top_k - 1];
    }
  }
  auto candidate = [&](int64_t i) { return !(s[i] < kth) && !std::isinf(s[i]); };
  double mx = -INFINITY;
  for (int64_t i = 0; i < n; i++)
    if (!(s[i] < kth)) mx = std::max(mx, (double)s[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; i++)
    if (candidate(i)) sum += (p[i] = std::exp((double)s[i] - mx));
  for (double& x : p) x /= sum;
  if (opt.top_p < 1.0f) {
    // HF's rule: in ascending order of score (ties: the lower index first), remove tokens while the
    // cumulative probability is <= 1 - p, never the most likely. Token r of the descending order goes when
    // the mass from it down, 1 - (mass above it), is <= 1 - p, so only the most likely tokens need sorting:
    // the top c (by nth_element), c growing until the cut falls among them.
    const double cut = 1.0 - (double)opt.top_p;
    // Each token as one 64-bit key: the score's bits made order-preserving (-0 as +0), then the index, so
    // that the descending key order is the descending score order with ties by the higher index first.
    std::vector<uint64_t>& key = w.order;
    key.clear();
    for (int64_t i = 0; i < n; i++)
      if (p[i] > 0.0) {
        uint32_t u;
        const float v = s[i] == 0.0f ? 0.0f : s[i];
        std::memcpy(&u, &v, 4);
        u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
        key.push_back((uint64_t)u << 32 | (uint64_t)i);
      }
    const int64_t m = (int64_t)key.size();
    for (int64_t c = std::min<int64_t>(m, 256);; c = std::min(m, 8 * c)) {
      if (c < m) std::nth_element(key.begin(), key.begin() + c, key.end(), std::greater<uint64_t>());
      std::sort(key.begin(), key.begin() + c, std::greater<uint64_t>());
      int64_t keep = -1;
      double above = 0;
      for (int64_t r = 0; r < c; r++) {
        if (r > 0 && 1.0 - above <= cut) {
          keep = r;
          break;
        }
        above += p[key[r] & 0xFFFFFFFFu];
      }
      if (keep < 0 && c < m) continue;
      for (int64_t r = keep < 0 ? m : keep; r < m; r++) p[key[r] & 0xFFFFFFFFu] = 0.0;
      break;
    }
    double kept = 0;
    for (double x : p) kept += x;
    for (double& x : p) x /= kept;
  }
}

std::vector<double> sampling_distribution(const float* logits, int64_t n, const SamplingOptions& opt) {
  SamplingScratch w;
  std::vector<double> p;
  distribution_into(logits, n, opt, w, p);
  return p;
}

Sampler::Sampler(const SamplingOptions& opt) : opt_(opt), rng_(opt.seed) {}

int32_t Sampler::sample(const float* logits, int64_t n) {
  if (opt_.temperature <= 0.0f) return argmax(logits, n);
  std::vector<double>& p = p_;
  distribution_into(logits, n, opt_, scratch_, p);
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
