// CUDA optimizer steps against the CPU optimizer (itself checked against torch / bitsandbytes): params and
// states bit-identical after 6 steps of the golden inputs, for AdamW, AdamW8bit and Lion8bit (8-bit and
// f32-state tensors); and the step time for 256M parameters on the GPU, with the bandwidth it reaches
// counting the bytes each step must move.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>

#include "core/allocator.h"
#include "io/safetensors.h"
#include "optim/optimizer.h"

using namespace qtune;

namespace {

const char* kNames[] = {"w_big", "w_odd", "b_small"};

std::shared_ptr<SafetensorsFile> golden() {
  static auto f = SafetensorsFile::open(std::string(QTUNE_FIXTURES) + "/optim/optim_golden.safetensors");
  return f;
}

Optimizer run(OptimizerKind kind, Device dev) {
  ParamGroup g;
  g.weight_decay = 0.01;
  for (const char* n : kNames) {
    Tensor p = golden()->get(std::string("init.") + n).clone().to(dev);
    g.params.push_back({n, p, Tensor::zeros(p.shape(), DType::F32, dev)});
  }
  Optimizer opt(OptimizerConfig::defaults(kind), {g});
  Tensor lrs = golden()->get("lrs");
  for (int s = 0; s < 6; ++s) {
    for (size_t i = 0; i < 3; ++i) {
      Tensor dst = opt.groups()[0].params[i].grad;
      Tensor src = golden()->get(std::string("grads.") + kNames[i]).slice0(s, 1).clone();
      dst.copy_from(src.reshape(dst.shape()));
    }
    opt.step(lrs.data<double>()[s]);
  }
  return opt;
}

bool same(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  Tensor x = a.to(Device::CPU), y = b.to(Device::CPU);
  return x.nbytes() == y.nbytes() && std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0;
}

}  // namespace

TEST(OptimCuda, BitIdenticalToCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  for (OptimizerKind kind : {OptimizerKind::AdamW, OptimizerKind::AdamW8bit, OptimizerKind::Lion8bit}) {
    Optimizer cpu = run(kind, Device::CPU);
    Optimizer gpu = run(kind, Device::CUDA);
    for (size_t i = 0; i < 3; ++i) {
      const ParamState& a = cpu.state(kNames[i]);
      const ParamState& b = gpu.state(kNames[i]);
      EXPECT_TRUE(b.state1.is_cuda());
      EXPECT_TRUE(same(cpu.groups()[0].params[i].param, gpu.groups()[0].params[i].param))
          << optimizer_kind_name(kind) << " " << kNames[i] << " param";
      EXPECT_TRUE(same(a.state1, b.state1)) << optimizer_kind_name(kind) << " " << kNames[i];
      EXPECT_TRUE(same(a.state2, b.state2)) << optimizer_kind_name(kind) << " " << kNames[i];
      EXPECT_TRUE(same(a.absmax1, b.absmax1)) << optimizer_kind_name(kind) << " " << kNames[i];
      EXPECT_TRUE(same(a.absmax2, b.absmax2)) << optimizer_kind_name(kind) << " " << kNames[i];
    }
  }
}

TEST(OptimCuda, StepTime256M) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  const int64_t n = 256LL << 20;
  for (OptimizerKind kind : {OptimizerKind::AdamW, OptimizerKind::AdamW8bit}) {
    ParamGroup g;
    g.weight_decay = 0.01;
    Tensor p = Tensor::zeros({n}, DType::F32, Device::CUDA);
    // Non-zero gradients (an all-zero state block would skip the requantization).
    Tensor host = Tensor::empty({n}, DType::F32);
    uint32_t x = 12345;
    for (int64_t i = 0; i < n; ++i) {
      x = x * 1664525u + 1013904223u;
      host.data<float>()[i] = ((int32_t)(x >> 8) - (1 << 23)) * (1e-2f / (1 << 23));
    }
    Tensor gr = host.to(Device::CUDA);
    g.params.push_back({"w", p, gr});
    Optimizer opt(OptimizerConfig::defaults(kind), {g});
    opt.step(1e-3);  // states, maps
    cudaDeviceSynchronize();
    const int iters = 20;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) opt.step(1e-3);
    cudaDeviceSynchronize();
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
    // Bytes per element: f32 AdamW reads p, g, m, v and writes p, m, v (28); 8-bit reads p, g and 2 codes
    // and writes p and 2 codes (16), absmax negligible.
    const double bytes = (kind == OptimizerKind::AdamW ? 28.0 : 16.0) * n;
    std::printf("%s 256M params: %.2f ms/step, %.0f GB/s\n", optimizer_kind_name(kind), ms, bytes / ms / 1e6);
  }
}
