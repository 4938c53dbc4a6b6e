// lora_down_group on CUDA (train/lora_fused.h): the stacked down products of q/k/v (3 modules) and gate/up
// (2) against the CPU op of each module alone on the same bf16-rounded inputs (so each module keeps its own
// mask), both measured against float64 loops: the CUDA error stays within 2× (+ slack) the CPU op's error in
// BF16. Shapes: the 8B layer's h1/h2 (4096 features, 2048 tokens), odd token counts, ranks 8 and 16, dropout
// 0.05 with a row offset and none. Prints the time of one group launch against one lora_down per module.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>

#include "../../ops/op_test_util.h"
#include "../lora_fused_ref.h"
#include "core/allocator.h"
#include "ops/elementwise.h"

using namespace qtune;
using qtune_test::as;
using qtune_test::randn;
using qtune_test::round_bf16;
using qtune_test::rel_err;

namespace {


// Mean µs of f over reps calls queued back to back.
template <class F>
double time_us(F f, int reps = 50) {
  f();
  cudaDeviceSynchronize();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; i++) f();
  cudaDeviceSynchronize();
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / reps;
}

}  // namespace

TEST(LoraGroupCuda, MatchesTheCpuOpPerModule) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  struct Case {
    int64_t N, K, r;
    int n;
    double p;
    int64_t row0;
  };
  const Case cases[] = {{2048, 4096, 16, 3, 0.05, 0}, {2048, 4096, 16, 2, 0.05, 0},
                        {77, 4096, 16, 3, 0.1, 5},    {301, 1024, 8, 2, 0.3, 3},
                        {45, 4096, 16, 3, 0.0, 0},    {130, 4096, 12, 2, 0.05, 9}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "N " << c.N << " K " << c.K << " r " << c.r << " modules " << c.n);
    Tensor x = round_bf16(randn({c.N, c.K})), xg = as(x, DType::BF16, Device::CUDA);
    std::vector<Tensor> w, wg, oc, og;
    std::vector<LoraMask> mk;
    for (int i = 0; i < c.n; i++) {
      w.push_back(round_bf16(randn({c.r, c.K}, 0.05f)));
      wg.push_back(as(w[i], DType::BF16, Device::CUDA));
      oc.push_back(Tensor::empty({c.N, c.r}, DType::F32));
      og.push_back(Tensor::empty({c.N, c.r}, DType::BF16, Device::CUDA));
      mk.push_back(lora_mask(1000 + 17 * i, c.row0, c.K, c.p));
    }
    Tensor* outs[kLoraGroupMax];
    const Tensor* ws[kLoraGroupMax];
    const LoraMask* ms[kLoraGroupMax];
    for (int i = 0; i < c.n; i++) {
      outs[i] = &og[i];
      ws[i] = &wg[i];
      ms[i] = c.p > 0 ? &mk[i] : nullptr;
    }
    lora_down_group(outs, xg, ws, ms, c.n);
    for (int i = 0; i < c.n; i++) {
      std::vector<double> want = qtune_test::ref_lora_down(x, w[i], 1.0f, ms[i]);
      lora_down(oc[i], x, w[i], 1.0f, ms[i]);
      const double ec = rel_err(round_bf16(oc[i]), want),
                   eg = rel_err(as(og[i], DType::F32, Device::CPU), want);
      std::printf("N %5lld K %5lld r %2lld p %.2f module %d/%d  group CUDA %.2e  CPU(bf16 out) %.2e\n",
                  (long long)c.N, (long long)c.K, (long long)c.r, c.p, i, c.n, eg, ec);
      EXPECT_LE(eg, 2 * ec + 1e-4);
    }
    if (c.N == 2048) {
      const double tg = time_us([&] { lora_down_group(outs, xg, ws, ms, c.n); });
      const double ts = time_us([&] {
        for (int i = 0; i < c.n; i++) lora_down(og[i], xg, wg[i], 1.0f, ms[i]);
      });
      std::printf("N %lld K %lld r %lld, %d modules: group %.1f us, separate %.1f us\n", (long long)c.N,
                  (long long)c.K, (long long)c.r, c.n, tg, ts);
    }
  }
}
