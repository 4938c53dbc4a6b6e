// clip_grad_norm with gradients on the GPU against the same call on CPU copies (itself checked against
// torch in schedule_clip_test.cpp): the norm within f64-summation-order error, the scaled gradients bit for
// bit (both multiply each f32 by the same f32 coefficient), and nothing changed when the norm is under the
// limit; zero_cuda (TrainableParams::zero_grads) zeroes every element of arrays across chunk edges.
#include "optim/cuda/clip_cuda.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/allocator.h"
#include "optim/clip.h"

using namespace qtune;

namespace {

std::vector<ParamGroup> random_groups(Device dev, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<ParamGroup> groups(2);
  const int64_t sizes[] = {7, 65536, 65537, 300001, 16 * 4096, 1};  // chunk edges (65,536) and odd tails
  for (size_t i = 0; i < 6; i++) {
    std::vector<float> v(sizes[i]);
    for (float& x : v) x = nd(rng) * (1.0f + (float)i);
    Tensor g = Tensor::from_f32(v, {sizes[i]}).to(dev);
    groups[i % 2].params.push_back({"p" + std::to_string(i), Tensor(), g});
  }
  return groups;
}

}  // namespace

TEST(ClipCuda, MatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  for (double max_norm : {1.0, 1e9}) {
    auto cpu = random_groups(Device::CPU, 5), gpu = random_groups(Device::CUDA, 5);
    const float tc = clip_grad_norm(cpu, max_norm), tg = clip_grad_norm(gpu, max_norm);
    EXPECT_NEAR(tg, tc, 1e-6 * tc) << max_norm;
    for (size_t gi = 0; gi < cpu.size(); gi++)
      for (size_t pi = 0; pi < cpu[gi].params.size(); pi++)
        EXPECT_EQ(gpu[gi].params[pi].grad.to(Device::CPU).to_f32_vector(),
                  cpu[gi].params[pi].grad.to_f32_vector())
            << "max_norm " << max_norm << ", " << cpu[gi].params[pi].name;
  }
}

TEST(ClipCuda, ZeroManyArrays) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  auto groups = random_groups(Device::CUDA, 9);
  std::vector<float*> xs;
  std::vector<int64_t> ns;
  for (auto& g : groups)
    for (auto& p : g.params) {
      xs.push_back(p.grad.data<float>());
      ns.push_back(p.grad.numel());
    }
  zero_cuda(xs, ns);
  for (auto& g : groups)
    for (auto& p : g.params)
      for (float v : p.grad.to(Device::CPU).to_f32_vector()) ASSERT_EQ(v, 0.0f) << p.name;
}
