// Paged optimizer states over many mid-size tensors (the shape of LoRA training): the pinned state arena
// and batch packing of PagedStates (a batch of consecutive parameters moves in one copy each way, each
// staged array lands where the update expects it), and the paged, unpaged CUDA and CPU optimizers
// bit-identical over more tensors than one multi-tensor launch takes, with partial 256-blocks, f32-state
// tensors, a parameter whose first grad comes late (its states in a second arena) and a checkpoint round
// trip.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/allocator.h"
#include "optim/cuda/paged_states.h"
#include "optim/optimizer.h"

using namespace qtune;

namespace {

Tensor random_host(const Shape& shape, uint64_t seed, float scale) {
  Tensor t = Tensor::empty(shape, DType::F32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
  return t;
}

bool same(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  Tensor x = a.to(Device::CPU), y = b.to(Device::CPU);
  return x.nbytes() == y.nbytes() && std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0;
}

// 41 tensors in two groups: 8-bit with and without a partial last block, f32 states (< 4096 values), and
// "late", whose grad is undefined in the first two steps.
const int kTensors = 41;
int64_t numel_of(int t) {
  const int64_t sizes[8] = {16384, 65536, 4096, 5000, 3000, 8229, 57344, 100};
  return t == kTensors - 1 ? 20000 : sizes[t % 8];
}

std::vector<ParamGroup> many_groups(Device dev) {
  std::vector<ParamGroup> g(2);
  g[0].weight_decay = 0.01;
  g[1].lr_scale = 0.5;
  for (int t = 0; t < kTensors; ++t) {
    const int64_t n = numel_of(t);
    const Shape shape = n % 16 == 0 ? Shape{16, n / 16} : Shape{n};
    Tensor p = random_host(shape, 10 + t, 1.0f).to(dev);
    g[t < 25 ? 0 : 1].params.push_back(
        {t == kTensors - 1 ? "late" : "t" + std::to_string(t), p, Tensor::zeros(shape, DType::F32, dev)});
  }
  return g;
}

Optimizer make_many(OptimizerKind kind, Device dev, bool paged, int64_t slot) {
  OptimizerConfig cfg = OptimizerConfig::defaults(kind);
  cfg.paged = paged;
  cfg.paged_slot_bytes = slot;
  return Optimizer(cfg, many_groups(dev));
}

void run_many(Optimizer& opt, int first, int last) {
  const double lrs[] = {1e-3, 2e-3, 5e-4, 3e-3, 1e-4};
  for (int s = first; s < last; ++s) {
    uint64_t seed = 5000 + 100 * s;
    for (ParamGroup& g : opt.groups())
      for (ParamRef& p : g.params) {
        if (p.name == "late" && s < 2) {
          p.grad = Tensor();
          continue;
        }
        if (!p.grad.defined()) p.grad = Tensor::zeros(p.param.shape(), DType::F32, p.param.device());
        p.grad.copy_from(random_host(p.grad.shape(), seed++, 0.01f * (1 + s % 3)));
      }
    opt.step(lrs[s]);
  }
}

void expect_same_many(const Optimizer& a, const Optimizer& b, const std::string& what) {
  for (size_t gi = 0; gi < a.groups().size(); ++gi)
    for (size_t i = 0; i < a.groups()[gi].params.size(); ++i) {
      const std::string& n = a.groups()[gi].params[i].name;
      EXPECT_TRUE(same(a.groups()[gi].params[i].param, b.groups()[gi].params[i].param)) << what << " " << n;
      ASSERT_EQ(a.has_state(n), b.has_state(n)) << what << " " << n;
      if (!a.has_state(n)) continue;
      const ParamState &x = a.state(n), &y = b.state(n);
      EXPECT_EQ(x.step, y.step) << what << " " << n;
      EXPECT_EQ(x.quantized, y.quantized) << what << " " << n;
      EXPECT_TRUE(same(x.state1, y.state1)) << what << " " << n << " state1";
      EXPECT_TRUE(same(x.state2, y.state2)) << what << " " << n << " state2";
      EXPECT_TRUE(same(x.absmax1, y.absmax1)) << what << " " << n << " absmax1";
      EXPECT_TRUE(same(x.absmax2, y.absmax2)) << what << " " << n << " absmax2";
    }
}

}  // namespace

TEST(OptimCudaPagedBatch, ArenaBatchIsOneCopy) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  // 100 tensors of 65536 8-bit values: regions of 2 · 65536 + 2 · 1 KiB = 133,120 bytes, 7 to a 1 MiB slot.
  const int count = 100;
  const int64_t n = 65536, slot = 1 << 20;
  std::vector<PagedStateSpec> specs(count, PagedStateSpec{{n}, true, true, 256});
  std::vector<PagedHostStates> host = pinned_state_arena(specs);
  ASSERT_EQ(host[0].region_bytes, 2 * n + 2 * 1024);
  for (int t = 0; t + 1 < count; ++t)
    ASSERT_EQ((char*)host[t + 1].state[0].raw(), (char*)host[t].state[0].raw() + host[t].region_bytes);
  std::mt19937 rng(3);
  for (PagedHostStates& h : host)
    for (int k = 0; k < 2; ++k) {
      for (int64_t i = 0; i < n; ++i) h.state[k].data<uint8_t>()[i] = (uint8_t)rng();
      for (int64_t i = 0; i < h.absmax[k].numel(); ++i) h.absmax[k].data<float>()[i] = (float)rng();
    }
  std::vector<Tensor> before_s2, before_a;
  for (PagedHostStates& h : host) {
    before_s2.push_back(h.state[1].clone());
    before_a.push_back(h.absmax[0].clone());
  }
  std::vector<PagedJob> jobs(count);
  for (int t = 0; t < count; ++t) {
    jobs[t].n = n;
    jobs[t].quantized = true;
    jobs[t].state[0] = host[t].state[0];
    jobs[t].state[1] = host[t].state[1];
    jobs[t].absmax[0] = host[t].absmax[0];
    jobs[t].absmax[1] = host[t].absmax[1];
    jobs[t].region_bytes = host[t].region_bytes;
    jobs[t].arena = host[t].arena;
  }
  const PagedJob* first = nullptr;
  int pieces = 0, batches = 0;
  PagedStates ps(slot);
  // The "update" writes job t's index + 1 over its staged state1 and its absmax2 with zero bytes: the host
  // states must come back with exactly that, the other arrays unchanged.
  ps.step(jobs, [&](const std::vector<PagedPiece>& batch) {
    ++batches;
    for (const PagedPiece& pc : batch) {
      if (!first) first = pc.job;
      const int t = (int)(pc.job - first);
      EXPECT_EQ(pc.off, 0);
      EXPECT_EQ(pc.len, n);
      cudaMemsetAsync(pc.st.state[0], t + 1, (size_t)n, 0);
      cudaMemsetAsync(pc.st.absmax[1], 0, (size_t)(n / 256 * 4), 0);
      ++pieces;
    }
  });
  ps.wait();
  EXPECT_EQ(pieces, count);
  EXPECT_EQ(batches, (count + 6) / 7);
  EXPECT_EQ(ps.copies_per_direction(), batches);  // one copy per batch each way
  EXPECT_LE(ps.device_bytes(), 2 * slot);
  for (int t = 0; t < count; ++t) {
    bool ok = true;
    for (int64_t i = 0; i < n; ++i) ok = ok && host[t].state[0].data<uint8_t>()[i] == (uint8_t)(t + 1);
    for (int64_t i = 0; i < n / 256; ++i) ok = ok && host[t].absmax[1].data<float>()[i] == 0.0f;
    EXPECT_TRUE(ok) << "tensor " << t;
    EXPECT_TRUE(same(host[t].state[1], before_s2[t])) << "tensor " << t;
    EXPECT_TRUE(same(host[t].absmax[0], before_a[t])) << "tensor " << t;
  }
}

TEST(OptimCudaPagedBatch, ManyTensorsBitIdentical) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  for (OptimizerKind kind : {OptimizerKind::AdamW, OptimizerKind::AdamW8bit, OptimizerKind::Lion8bit}) {
    const std::string name = optimizer_kind_name(kind);
    Optimizer cpu = make_many(kind, Device::CPU, false, 64 << 10);
    Optimizer ref = make_many(kind, Device::CUDA, false, 64 << 10);
    run_many(cpu, 0, 5);
    run_many(ref, 0, 5);
    expect_same_many(cpu, ref, name + " cpu vs cuda");
    // 64 KiB: the 65536-value tensors are cut into pieces; 1 MiB: several batches of whole tensors; 16 MiB:
    // one batch.
    for (int64_t slot : {int64_t(64) << 10, int64_t(1) << 20, int64_t(16) << 20}) {
      Optimizer paged = make_many(kind, Device::CUDA, true, slot);
      run_many(paged, 0, 5);
      expect_same_many(ref, paged, name + " paged slot " + std::to_string(slot));
      EXPECT_FALSE(paged.state("t1").state1.is_cuda());
      EXPECT_EQ(paged.state("late").step, 3);
    }
  }
}

TEST(OptimCudaPagedBatch, CheckpointIntoArena) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  const std::string path = testing::TempDir() + "/paged_batch_optim.safetensors";
  for (OptimizerKind kind : {OptimizerKind::AdamW8bit, OptimizerKind::Lion8bit}) {
    Optimizer ref = make_many(kind, Device::CUDA, false, 1 << 20);
    Optimizer paged = make_many(kind, Device::CUDA, true, 1 << 20);
    run_many(ref, 0, 3);
    ref.save(path);
    for (size_t gi = 0; gi < 2; ++gi)
      for (size_t i = 0; i < ref.groups()[gi].params.size(); ++i)
        paged.groups()[gi].params[i].param.copy_from(ref.groups()[gi].params[i].param);
    paged.load(path);  // the states land in one arena
    run_many(ref, 3, 5);
    run_many(paged, 3, 5);
    expect_same_many(ref, paged, std::string("resumed paged ") + optimizer_kind_name(kind));
  }
  std::remove(path.c_str());
}
