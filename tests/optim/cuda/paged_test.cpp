// Paged optimizers (states in pinned host memory, streamed through the device staging slots) against the
// unpaged CUDA optimizers: params and states bit-identical over several steps of random grads, for
// AdamW, AdamW8bit and Lion8bit, over tensors that span many slots, share one slot, and keep f32 states
// (< 4096 values); device memory bounded by the staging slots; checkpoints interchangeable with the
// unpaged optimizer. With QTUNE_BENCH=1 (bench/optim_paged.sh): step time against the unpaged optimizers
// and the pinned host <-> device copy bandwidth, for one 256M-element parameter and for the 448 LoRA
// tensors (r = 16 on all linear layers) of a Llama-3-8B shape.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "core/allocator.h"
#include "optim/optimizer.h"

using namespace qtune;

namespace {

struct Spec {
  const char* name;
  Shape shape;
  int group;
  bool has_grad;
};

// Two groups (weight decay 0.01; no decay at half lr), sizes: many slots, a partial last 256-block,
// exactly min_8bit_size, f32-state tensors, and one without a grad.
const Spec kSpecs[] = {{"w_a", {300037}, 0, true},  {"w_b", {512, 1024}, 0, true},
                       {"s_4096", {4096}, 0, true}, {"s_3000", {3000}, 0, true},
                       {"s_7", {7}, 1, true},       {"s_100", {100}, 1, true},
                       {"w_c", {70000}, 1, true},   {"frozen", {5000}, 1, false}};
const double kLrs[] = {1e-3, 2e-3, 5e-4, 1e-3, 3e-3, 1e-4};

Tensor random_host(const Shape& shape, uint64_t seed, float scale) {
  Tensor t = Tensor::empty(shape, DType::F32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
  return t;
}

std::vector<ParamGroup> make_groups() {
  std::vector<ParamGroup> g(2);
  g[0].weight_decay = 0.01;
  g[1].lr_scale = 0.5;
  uint64_t seed = 1;
  for (const Spec& s : kSpecs) {
    Tensor p = random_host(s.shape, seed++, 1.0f).to(Device::CUDA);
    Tensor gr = s.has_grad ? Tensor::zeros(s.shape, DType::F32, Device::CUDA) : Tensor();
    g[s.group].params.push_back({s.name, p, gr});
  }
  return g;
}

Optimizer make_opt(OptimizerKind kind, bool paged, int64_t slot_bytes = 64 << 10) {
  OptimizerConfig cfg = OptimizerConfig::defaults(kind);
  cfg.paged = paged;
  cfg.paged_slot_bytes = slot_bytes;
  return Optimizer(cfg, make_groups());
}

// Steps [first, last) with fresh random grads (the same for every optimizer at a given step).
void run_steps(Optimizer& opt, int first, int last) {
  for (int s = first; s < last; ++s) {
    uint64_t seed = 1000 + 100 * s;
    for (ParamGroup& g : opt.groups())
      for (ParamRef& p : g.params)
        if (p.grad.defined()) p.grad.copy_from(random_host(p.grad.shape(), seed++, 0.01f * (1 + s % 3)));
    opt.step(kLrs[s]);
  }
}

bool same(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  Tensor x = a.to(Device::CPU), y = b.to(Device::CPU);
  return x.nbytes() == y.nbytes() && std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0;
}

// Params and every state of two optimizers over the same specs, bit for bit.
void expect_same(const Optimizer& a, const Optimizer& b, const std::string& what) {
  for (size_t gi = 0; gi < 2; ++gi)
    for (size_t i = 0; i < a.groups()[gi].params.size(); ++i) {
      const std::string& n = a.groups()[gi].params[i].name;
      EXPECT_TRUE(same(a.groups()[gi].params[i].param, b.groups()[gi].params[i].param)) << what << " " << n;
      ASSERT_EQ(a.has_state(n), b.has_state(n)) << what << " " << n;
      if (!a.has_state(n)) continue;
      const ParamState &x = a.state(n), &y = b.state(n);
      EXPECT_EQ(x.step, y.step);
      EXPECT_EQ(x.quantized, y.quantized) << what << " " << n;
      EXPECT_TRUE(same(x.state1, y.state1)) << what << " " << n << " state1";
      EXPECT_TRUE(same(x.state2, y.state2)) << what << " " << n << " state2";
      EXPECT_TRUE(same(x.absmax1, y.absmax1)) << what << " " << n << " absmax1";
      EXPECT_TRUE(same(x.absmax2, y.absmax2)) << what << " " << n << " absmax2";
    }
}

const OptimizerKind kKinds[] = {OptimizerKind::AdamW, OptimizerKind::AdamW8bit, OptimizerKind::Lion8bit};

}  // namespace

TEST(OptimCudaPaged, BitIdenticalToUnpaged) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  for (OptimizerKind kind : kKinds) {
    // 64 KiB slots: w_a and w_b cross many batches, the small tensors share one; 16 MiB: one batch.
    for (int64_t slot : {int64_t(64) << 10, int64_t(16) << 20}) {
      Optimizer ref = make_opt(kind, false);
      Optimizer paged = make_opt(kind, true, slot);
      run_steps(ref, 0, 6);
      run_steps(paged, 0, 6);
      const std::string what = std::string(optimizer_kind_name(kind)) + " slot " + std::to_string(slot);
      EXPECT_TRUE(paged.state("w_a").state1.defined() && !paged.state("w_a").state1.is_cuda()) << what;
      EXPECT_TRUE(ref.state("w_a").state1.is_cuda());
      EXPECT_EQ(paged.state("s_3000").quantized, false);
      EXPECT_EQ(paged.state("w_a").quantized, kind != OptimizerKind::AdamW);
      EXPECT_FALSE(paged.has_state("frozen"));
      expect_same(ref, paged, what);
    }
  }
}

TEST(OptimCudaPaged, CheckpointCrossesToUnpaged) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  const std::string path = testing::TempDir() + "/paged_optim.safetensors";
  for (OptimizerKind kind : kKinds) {
    Optimizer paged = make_opt(kind, true);
    Optimizer ref = make_opt(kind, false);
    run_steps(paged, 0, 3);
    paged.save(path);
    for (size_t gi = 0; gi < 2; ++gi)
      for (size_t i = 0; i < paged.groups()[gi].params.size(); ++i)
        ref.groups()[gi].params[i].param.copy_from(paged.groups()[gi].params[i].param);
    ref.load(path);
    run_steps(paged, 3, 6);
    run_steps(ref, 3, 6);
    expect_same(ref, paged, std::string("resume ") + optimizer_kind_name(kind));
    // And back: the unpaged checkpoint loads into a paged optimizer.
    ref.save(path);
    paged.load(path);
    expect_same(ref, paged, std::string("load ") + optimizer_kind_name(kind));
  }
  std::remove(path.c_str());
}

TEST(OptimCudaPaged, DeviceMemoryIsTheStagingSlots) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  const int64_t n = 4 << 20, slot = 1 << 20;
  for (OptimizerKind kind : {OptimizerKind::AdamW, OptimizerKind::AdamW8bit}) {
    for (bool paged : {true, false}) {
      ParamGroup g;
      for (int k = 0; k < 3; ++k) {
        Tensor p = random_host({n}, 7 + k, 1.0f).to(Device::CUDA);
        g.params.push_back({"w" + std::to_string(k), p, random_host({n}, 70 + k, 0.01f).to(Device::CUDA)});
      }
      cudaDeviceSynchronize();
      const size_t before = device_memory_stats().in_use;
      device_reset_peak();
      {
        OptimizerConfig cfg = OptimizerConfig::defaults(kind);
        cfg.paged = paged;
        cfg.paged_slot_bytes = slot;
        Optimizer opt(cfg, {g});
        opt.step(1e-3);
        opt.step(1e-3);
        cudaDeviceSynchronize();
        const DeviceMemoryStats st = device_memory_stats();
        const double held = (double)(st.in_use - before), peak = (double)(st.peak_in_use - before);
        const double states = (kind == OptimizerKind::AdamW ? 8.0 : 2.0) * 3 * n;
        std::printf("%s%s, 3 x %lld params: device memory held %.2f MiB, peak %.2f MiB (states %.1f MiB)\n",
                    paged ? "paged_" : "", optimizer_kind_name(kind), (long long)n, held / 1048576,
                    peak / 1048576, states / 1048576);
        if (paged) {
          // Two slots + the 8-bit code books and lookup tables (2 × 65 KiB).
          EXPECT_LE(peak, 2.0 * slot + 256 * 1024);
        } else {
          EXPECT_GE(held, states);
        }
      }
    }
  }
}

namespace {

struct Bandwidth {
  double h2d, d2h, both;  // GB/s: one direction alone, both directions at once (bytes of both / time)
};

Bandwidth pinned_bandwidth(size_t bytes) {
  void* h[2] = {host_pinned_malloc(bytes), host_pinned_malloc(bytes)};
  void* d[2] = {device_malloc(bytes), device_malloc(bytes)};
  std::memset(h[0], 1, bytes);
  std::memset(h[1], 2, bytes);
  cudaStream_t a, b;
  cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking);
  cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking);
  auto in = [&] { cudaMemcpyAsync(d[0], h[0], bytes, cudaMemcpyHostToDevice, a); };
  auto out = [&] { cudaMemcpyAsync(h[1], d[1], bytes, cudaMemcpyDeviceToHost, b); };
  auto seconds = [&](auto fn) {
    fn();
    cudaStreamSynchronize(a);
    cudaStreamSynchronize(b);
    const int reps = 5;
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) fn();
    cudaStreamSynchronize(a);
    cudaStreamSynchronize(b);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
  };
  Bandwidth bw;
  bw.h2d = bytes / seconds(in) / 1e9;
  bw.d2h = bytes / seconds(out) / 1e9;
  bw.both = 2.0 * bytes / seconds([&] {
              in();
              out();
            }) /
            1e9;
  cudaStreamDestroy(a);
  cudaStreamDestroy(b);
  for (int k = 0; k < 2; ++k) {
    host_pinned_free(h[k]);
    device_free(d[k]);
  }
  return bw;
}

}  // namespace

namespace {

// Mean ms of `iters` steps after one warm-up step (which makes the states and the maps), with the device
// memory the optimizer holds after the warm-up.
struct Timing {
  double ms, held_mib;
};

Timing time_steps(const OptimizerConfig& cfg, const ParamGroup& g, int iters) {
  cudaDeviceSynchronize();
  const size_t before = device_memory_stats().in_use;
  Optimizer opt(cfg, {g});
  opt.step(1e-3);
  cudaDeviceSynchronize();
  Timing t;
  t.held_mib = (double)(device_memory_stats().in_use - before) / 1048576;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) opt.step(1e-3);
  cudaDeviceSynchronize();
  t.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
  return t;
}

// Host <-> device bytes of one paged step over a tensor of n values: each state byte in and out (f32
// AdamW: 2 × 4 B per value; 8-bit: 1 code byte per value and state + 1 absmax float per 256-block and
// state; Lion has one state). Tensors under min_8bit_size keep f32 states.
double moved_bytes(const OptimizerConfig& cfg, int64_t n) {
  const int states = cfg.kind == OptimizerKind::Lion8bit ? 1 : 2;
  if (cfg.kind == OptimizerKind::AdamW || n < cfg.min_8bit_size) return 2.0 * states * 4 * n;
  return 2.0 * states * (n + 4 * ((n + cfg.blocksize - 1) / cfg.blocksize));
}

struct BenchCase {
  const char* name;
  int64_t slot_mib;  // 0: unpaged
};

void print_header() {
  std::printf("%-18s %5s %9s %12s %14s %10s %9s\n", "optim", "slot", "ms/step", "device MiB", "host GB moved",
              "GB/s", "of both");
}

void print_row(const BenchCase& c, const Timing& t, double moved, const Bandwidth& bw) {
  if (c.slot_mib)
    std::printf("%-18s %5lld %9.2f %12.1f %14.3f %10.1f %8.0f%%\n", c.name, (long long)c.slot_mib, t.ms,
                t.held_mib, moved / 1e9, moved / t.ms / 1e6, 100.0 * moved / t.ms / 1e6 / bw.both);
  else
    std::printf("%-18s %5s %9.2f %12.1f %14s %10s %9s\n", c.name, "-", t.ms, t.held_mib, "0", "-", "-");
}

// Random values in [-scale, scale) from a 32-bit LCG (fast for 256M values).
Tensor lcg_host(int64_t n, uint32_t seed, float scale) {
  Tensor host = Tensor::empty({n}, DType::F32);
  uint32_t x = seed;
  for (int64_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    host.data<float>()[i] = ((int32_t)(x >> 8) - (1 << 23)) * (scale / (1 << 23));
  }
  return host;
}

}  // namespace

TEST(OptimCudaPaged, StepTime256M) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  if (!std::getenv("QTUNE_BENCH")) GTEST_SKIP() << "benchmark: set QTUNE_BENCH=1 (bench/optim_paged.sh)";
  const int64_t n = 256LL << 20;
  const Bandwidth bw = pinned_bandwidth(256 << 20);
  std::printf("pinned copies, 256 MiB: H2D %.1f GB/s, D2H %.1f GB/s, both at once %.1f GB/s\n", bw.h2d,
              bw.d2h, bw.both);
  ParamGroup g;
  g.weight_decay = 0.01;
  g.params.push_back(
      {"w", Tensor::zeros({n}, DType::F32, Device::CUDA), lcg_host(n, 12345, 1e-2f).to(Device::CUDA)});
  const BenchCase cases[] = {{"adamw_torch", 0},        {"paged_adamw_32bit", 4}, {"paged_adamw_32bit", 16},
                             {"paged_adamw_32bit", 64}, {"adamw_8bit", 0},        {"paged_adamw_8bit", 4},
                             {"paged_adamw_8bit", 16},  {"paged_adamw_8bit", 64}, {"paged_lion_8bit", 16}};
  print_header();
  for (const BenchCase& c : cases) {
    OptimizerConfig cfg = optimizer_config_from_name(c.name);
    if (c.slot_mib) cfg.paged_slot_bytes = c.slot_mib << 20;
    const Timing t = time_steps(cfg, g, 10);
    print_row(c, t, cfg.paged ? moved_bytes(cfg, n) : 0.0, bw);
  }
}

// LoRA r = 16 on the seven linear layers of each of the 32 Llama-3-8B blocks (hidden 4096, 8 KV heads of
// 128, MLP 14336), in the trainer's parameter order: 448 tensors of 16,384 to 229,376 values, 41.9M in all.
TEST(OptimCudaPaged, StepTimeLora8B) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  if (!std::getenv("QTUNE_BENCH")) GTEST_SKIP() << "benchmark: set QTUNE_BENCH=1 (bench/optim_paged.sh)";
  const Bandwidth bw = pinned_bandwidth(256 << 20);
  std::printf("pinned copies, 256 MiB: H2D %.1f GB/s, D2H %.1f GB/s, both at once %.1f GB/s\n", bw.h2d,
              bw.d2h, bw.both);
  const int64_t r = 16, hidden = 4096, kv = 1024, mlp = 14336;
  const int64_t io[7][2] = {{hidden, hidden}, {hidden, kv},  {hidden, kv}, {hidden, hidden},
                            {hidden, mlp},    {hidden, mlp}, {mlp, hidden}};  // q k v o gate up down
  ParamGroup g;
  g.weight_decay = 0.01;
  int64_t total = 0;
  uint32_t seed = 1;
  for (int layer = 0; layer < 32; ++layer)
    for (int m = 0; m < 7; ++m)
      for (int ab = 0; ab < 2; ++ab) {
        const Shape shape = ab == 0 ? Shape{r, io[m][0]} : Shape{io[m][1], r};  // A [r, in], B [out, r]
        const int64_t n = shape_numel(shape);
        Tensor p = lcg_host(n, seed++, 1e-2f).to(Device::CUDA);
        Tensor gr = lcg_host(n, seed++, 1e-3f).to(Device::CUDA);
        g.params.push_back({"l" + std::to_string(layer) + "." + std::to_string(m) + (ab ? ".B" : ".A"),
                            p.reshape(shape), gr.reshape(shape)});
        total += n;
      }
  std::printf("%zu LoRA tensors, %lld params\n", g.params.size(), (long long)total);
  const BenchCase cases[] = {{"adamw_torch", 0},      {"paged_adamw_32bit", 16}, {"adamw_8bit", 0},
                             {"paged_adamw_8bit", 4}, {"paged_adamw_8bit", 16},  {"paged_adamw_8bit", 64},
                             {"paged_lion_8bit", 16}};
  print_header();
  for (const BenchCase& c : cases) {
    OptimizerConfig cfg = optimizer_config_from_name(c.name);
    if (c.slot_mib) cfg.paged_slot_bytes = c.slot_mib << 20;
    double moved = 0.0;
    if (cfg.paged)
      for (const ParamRef& p : g.params) moved += moved_bytes(cfg, p.param.numel());
    print_row(c, time_steps(cfg, g, 20), moved, bw);
  }
}
