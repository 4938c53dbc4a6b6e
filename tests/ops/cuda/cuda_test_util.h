// Helpers for the CUDA op tests: fresh random inputs (seeded from std::random_device and printed, so a
// failure can be replayed with QTUNE_TEST_SEED), host⇄device tensors, poisoning outputs with NaN bytes,
// and the relative-error measures of the bf16 rule: a bf16 kernel's ‖out − ref‖/‖ref‖ against a float64
// reference must be at most 2× that of the same math done in bf16 on the CPU.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"

namespace qtune {
namespace cuda_test {

#define QT_REQUIRE_GPU()                                           \
  do {                                                             \
    if (!::qtune::cuda_available()) GTEST_SKIP() << "no CUDA GPU"; \
  } while (0)

inline uint64_t test_seed() {
  static uint64_t seed = [] {
    const char* s = std::getenv("QTUNE_TEST_SEED");
    uint64_t v =
        s ? std::strtoull(s, nullptr, 10) : ((uint64_t)std::random_device{}() << 32) ^ std::random_device{}();
    std::printf("[cuda tests] QTUNE_TEST_SEED=%llu\n", (unsigned long long)v);
    return v;
  }();
  return seed;
}

struct Rng {
  std::mt19937_64 gen;
  Rng()
      : gen(test_seed() + (uint64_t)std::hash<std::string>{}(
                              ::testing::UnitTest::GetInstance()->current_test_info()->name())) {}
  float normal() { return std::normal_distribution<float>(0.0f, 1.0f)(gen); }
  int uniform_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); }  // [lo, hi]
};

inline float round_bf16(float x) {
  return bf16_to_f32(f32_to_bf16(x));
}
inline double round_bf16d(double x) {
  return (double)round_bf16((float)x);
}

// n normal values times scale, rounded to bf16 (so bf16 and f32 copies hold the same numbers).
inline std::vector<float> randn_bf16(Rng& rng, size_t n, float scale = 1.0f) {
  std::vector<float> v(n);
  for (auto& x : v) x = round_bf16(rng.normal() * scale);
  return v;
}

// A device tensor of dtype dt holding v (rounded to dt).
inline Tensor to_device(const std::vector<float>& v, const Shape& shape, DType dt) {
  return Tensor::from_f32(v, shape).to_dtype(dt).to(Device::CUDA);
}

inline Tensor device_i32(const std::vector<int32_t>& v, const Shape& shape) {
  return Tensor::from_i32(v, shape).to(Device::CUDA);
}

// Fills t's bytes with 0xFF: NaN in f32, bf16 and f16, so an element the kernel skips shows up.
inline void poison(Tensor& t) {
  std::vector<unsigned char> bytes(t.nbytes(), 0xFF);
  copy_bytes(t.raw(), t.device(), bytes.data(), Device::CPU, bytes.size());
}

inline Tensor poisoned(const Shape& shape, DType dt) {
  Tensor t = Tensor::empty(shape, dt, Device::CUDA);
  poison(t);
  return t;
}

inline size_t count_nonfinite(const std::vector<float>& v) {
  size_t n = 0;
  for (float x : v) n += !std::isfinite(x);
  return n;
}

template <class A, class B>
double rel_err(const std::vector<A>& got, const std::vector<B>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    double d = (double)got[i] - (double)ref[i];
    num += d * d;
    den += (double)ref[i] * (double)ref[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1e-300));
}

// The bf16 rule with its numbers printed: err(kernel) <= 2 * err(bf16 CPU math), both against float64.
inline void expect_bf16_rule(const std::string& what, double kernel_err, double bf16_err) {
  std::printf("  %-44s kernel rel err %.3e   bf16-CPU rel err %.3e   ratio %.2f\n", what.c_str(), kernel_err,
              bf16_err, kernel_err / (bf16_err > 0 ? bf16_err : 1e-300));
  EXPECT_LE(kernel_err, 2.0 * bf16_err) << what;
  EXPECT_GT(bf16_err, 0.0) << what << ": the bf16 baseline should carry rounding error";
}

// For f32 kernels: err against float64 below tol.
inline void expect_f32_close(const std::string& what, double kernel_err, double tol) {
  std::printf("  %-44s kernel rel err %.3e   (f32, tolerance %.0e)\n", what.c_str(), kernel_err, tol);
  EXPECT_LE(kernel_err, tol) << what;
}

// Runs fn, expecting a qtune::Error of kind whose message contains every needle.
template <class Fn>
void expect_error(Fn fn, ErrorKind kind, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "expected a qtune::Error";
  } catch (const Error& e) {
    EXPECT_EQ((int)e.kind(), (int)kind) << e.what();
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

}  // namespace cuda_test
}  // namespace qtune
