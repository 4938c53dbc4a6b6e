// Helpers for the CPU op tests: seeded random tensors and the relative norm error ‖got − want‖ / ‖want‖
// against a float64 reference.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "ops/elementwise.h"

namespace qtune_test {

inline std::mt19937_64& rng() {
  static std::mt19937_64 r(std::random_device{}());
  return r;
}

// F32 tensor with N(0, std²) entries (+ mean).
inline qtune::Tensor randn(const qtune::Shape& shape, float std = 1.0f, float mean = 0.0f) {
  std::normal_distribution<float> d(mean, std);
  std::vector<float> v(qtune::shape_numel(shape));
  for (float& x : v) x = d(rng());
  return qtune::Tensor::from_f32(v, shape);
}

inline std::vector<double> to_f64(const qtune::Tensor& t) {
  std::vector<float> f = t.to_f32_vector();
  return std::vector<double>(f.begin(), f.end());
}

inline double rel_err(const qtune::Tensor& got, const std::vector<double>& want) {
  std::vector<float> g = got.to_f32_vector();
  EXPECT_EQ(g.size(), want.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < g.size() && i < want.size(); i++) {
    double d = g[i] - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1e-300));
}

// Runs f, expects a qtune::Error of that kind whose message contains every part.
template <class F>
void expect_error(F f, qtune::ErrorKind kind, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const qtune::Error& e) {
    EXPECT_EQ((int)e.kind(), (int)kind) << e.what();
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

// A copy of t in dtype dt on device dev.
inline qtune::Tensor as(const qtune::Tensor& t, qtune::DType dt, qtune::Device dev) {
  qtune::Tensor c = qtune::Tensor::empty(t.shape(), dt, dev);
  qtune::convert(c, t.to(dev));
  return c;
}
// t rounded to bf16 and back to f32, on the CPU.
inline qtune::Tensor round_bf16(const qtune::Tensor& t) {
  return as(as(t, qtune::DType::BF16, qtune::Device::CPU), qtune::DType::F32, qtune::Device::CPU);
}

}  // namespace qtune_test
