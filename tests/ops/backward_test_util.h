// Helpers for the backward-op tests: central finite differences of a float64 scalar function, and the
// relative norm error of an f32 analytic gradient against them. The scalar is L = Σ out·R for a random R
// (R plays dout), so dL/dinput is exactly what each *_backward computes from dout = R.
#pragma once
#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>

#include "op_test_util.h"

namespace qtune_test {

using Vec = std::vector<double>;

// dL/dx by central differences, step h·max(1, |x_i|).
inline Vec finite_diff(const std::function<double(const Vec&)>& L, Vec x, double h = 1e-6) {
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); i++) {
    double x0 = x[i], step = h * std::max(1.0, std::fabs(x0));
    x[i] = x0 + step;
    double up = L(x);
    x[i] = x0 - step;
    double down = L(x);
    x[i] = x0;
    g[i] = (up - down) / (2 * step);
  }
  return g;
}

inline double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}

// rel_err with a printed line "<what>: rel err <e>" (the numbers the report quotes).
inline double grad_err(const char* what, const qtune::Tensor& got, const Vec& want) {
  double e = rel_err(got, want);
  std::printf("  %-40s rel err %.3g\n", what, e);
  return e;
}

}  // namespace qtune_test
