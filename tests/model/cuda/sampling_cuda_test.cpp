// argmax_key_cuda (greedy decoding on the GPU) against qtune::argmax, the host scan the sampler uses: random
// logits of vocabulary sizes from 1 to 152064, and the cases where a parallel max could differ from the
// first-index scan: ties (the first wins), -0 against +0 (equal), NaN at index 0 (it stays) and elsewhere
// (never wins), all -inf, the largest value last.
#include "model/cuda/sampling_cuda.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/allocator.h"
#include "core/error.h"
#include "model/sampling.h"
#include "ops/cuda/cuda_graph.h"

using namespace qtune;

namespace {

int32_t gpu_argmax(const std::vector<float>& v) {
  Tensor x = Tensor::from_f32(v, {(int64_t)v.size()}).to(Device::CUDA);
  Tensor key = Tensor::zeros({2}, DType::I32, Device::CUDA);
  argmax_key_cuda(key.data<uint64_t>(), x);
  uint64_t k = 0;
  cuda::copy_to_host_sync(&k, key.raw(), sizeof(k));
  return argmax_key_index(k);
}

}  // namespace

TEST(CudaGreedy, ArgmaxEqualsTheHostScan) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  std::mt19937 g(7);
  std::normal_distribution<float> d(0.0f, 3.0f);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  int cases = 0;
  auto check = [&](const std::vector<float>& v, const char* what) {
    EXPECT_EQ(gpu_argmax(v), argmax(v.data(), (int64_t)v.size())) << what << ", n = " << v.size();
    cases++;
  };
  for (int64_t n : {1, 2, 31, 32, 33, 1000, 4097, 32000, 128256, 151936, 152064}) {
    std::vector<float> v((size_t)n);
    for (float& x : v) x = d(g);
    check(v, "random");
    v[(size_t)n - 1] = 100.0f;
    check(v, "largest last");
    if (n < 3) continue;
    v[(size_t)n / 3] = 100.0f;  // a tie: the first of the two wins
    check(v, "tie");
    for (float& x : v) x = std::round(x);  // many ties at the max
    check(v, "rounded");
  }
  std::vector<float> z = {-0.0f, 0.0f, -1.0f};  // -0 and +0 tie: index 0
  check(z, "-0 then +0");
  z = {-1.0f, 0.0f, -0.0f};
  check(z, "+0 then -0");
  std::vector<float> v(5000);
  for (float& x : v) x = d(g);
  v[0] = nan;  // nothing is larger than the NaN at 0
  check(v, "NaN at 0");
  v[0] = 1.0f;
  for (size_t i = 1; i < v.size(); i += 7) v[i] = nan;  // later NaNs never win
  check(v, "NaNs later");
  std::vector<float> all_nan(300, nan);
  check(all_nan, "all NaN");
  all_nan[0] = -inf;
  check(all_nan, "-inf then NaNs");
  std::vector<float> ninf(1000, -inf);
  check(ninf, "all -inf");
  ninf[999] = -3.4e38f;
  check(ninf, "-inf but the last");
  std::vector<float> pinf(200, 1.0f);
  pinf[50] = inf, pinf[150] = inf;
  check(pinf, "+inf twice");
  std::printf("[ measured ] cuda greedy argmax: %d cases equal to the host scan\n", cases);
}

TEST(CudaGreedy, RefusesWhatItCannotScan) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  Tensor key = Tensor::zeros({2}, DType::I32, Device::CUDA);
  Tensor cpu = Tensor::zeros({4}, DType::F32);
  EXPECT_THROW(argmax_key_cuda(key.data<uint64_t>(), cpu), Error);
  Tensor bf = Tensor::zeros({4}, DType::BF16, Device::CUDA);
  EXPECT_THROW(argmax_key_cuda(key.data<uint64_t>(), bf), Error);
  Tensor empty = Tensor::zeros({0}, DType::F32, Device::CUDA);
  EXPECT_THROW(argmax_key_cuda(key.data<uint64_t>(), empty), Error);
}
