// A float64 reference of the LLaMA-Adapter prompt attention (peft/adaption_attention.h) for the op tests:
// out[n, h] = g · Σ_p softmax_p(q[n, h]·k[p, j]/√D) · v[p, j], j = h / (Hq/Hkv), on plain vectors.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

namespace adaption_ref {

struct Dims {
  int N, Hq, Hkv, D, Lp;
};

// q [N, Hq, D], k, v [Lp, Hkv, D] → out [N, Hq, D].
inline std::vector<double> forward(const Dims& d, const std::vector<double>& q, const std::vector<double>& k,
                                   const std::vector<double>& v, double g) {
  std::vector<double> out((size_t)d.N * d.Hq * d.D, 0.0), s(d.Lp);
  const int G = d.Hq / d.Hkv;
  for (int n = 0; n < d.N; ++n)
    for (int h = 0; h < d.Hq; ++h) {
      const int j = h / G;
      const double* qr = &q[((size_t)n * d.Hq + h) * d.D];
      double m = -1e300, sum = 0;
      for (int p = 0; p < d.Lp; ++p) {
        double dot = 0;
        for (int i = 0; i < d.D; ++i) dot += qr[i] * k[((size_t)p * d.Hkv + j) * d.D + i];
        s[p] = dot / std::sqrt((double)d.D);
        m = std::max(m, s[p]);
      }
      for (int p = 0; p < d.Lp; ++p) sum += s[p] = std::exp(s[p] - m);
      double* o = &out[((size_t)n * d.Hq + h) * d.D];
      for (int p = 0; p < d.Lp; ++p)
        for (int i = 0; i < d.D; ++i) o[i] += g * s[p] / sum * v[((size_t)p * d.Hkv + j) * d.D + i];
    }
  return out;
}

// Gradients of Σ dout ⊙ forward(...) by central differences in float64 (independent of the op's
// backward formulas): dq, dk, dv like their inputs, dg.
inline void backward_fd(const Dims& d, const std::vector<double>& q, const std::vector<double>& k,
                        const std::vector<double>& v, double g, const std::vector<double>& dout,
                        std::vector<double>& dq, std::vector<double>& dk, std::vector<double>& dv,
                        double& dg) {
  auto loss = [&](const std::vector<double>& q2, const std::vector<double>& k2, const std::vector<double>& v2,
                  double g2) {
    std::vector<double> o = forward(d, q2, k2, v2, g2);
    double l = 0;
    for (size_t i = 0; i < o.size(); ++i) l += o[i] * dout[i];
    return l;
  };
  const double h = 1e-6;
  auto grad_of = [&](std::vector<double> x, int which) {
    std::vector<double> gr(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const double x0 = x[i];
      x[i] = x0 + h;
      const double lp = which == 0 ? loss(x, k, v, g) : which == 1 ? loss(q, x, v, g) : loss(q, k, x, g);
      x[i] = x0 - h;
      const double lm = which == 0 ? loss(x, k, v, g) : which == 1 ? loss(q, x, v, g) : loss(q, k, x, g);
      x[i] = x0;
      gr[i] = (lp - lm) / (2 * h);
    }
    return gr;
  };
  dq = grad_of(q, 0);
  dk = grad_of(k, 1);
  dv = grad_of(v, 2);
  dg = (loss(q, k, v, g + h) - loss(q, k, v, g - h)) / (2 * h);
}

// ‖a − b‖ / ‖b‖.
template <class A>
double rel(const std::vector<A>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

}  // namespace adaption_ref
