// train/lora_fused on CUDA (BF16 inputs, f32 accumulation) against the CPU op on the same bf16-rounded
// inputs, both measured against float64 loops: the CUDA error stays within 2× (+ slack) the CPU op's error in
// the same output precision. Shapes cover the 8B layer's features (4096, 14336), ranks 8/12/16/32/64, odd
// token counts (not a multiple of any tile), a feature count off the 16-byte path (172), dropout 0 / 0.05 /
// 0.3 with a row offset, and the split-K paths. The masks must agree element for element: checked exactly
// through dx.
#include <gtest/gtest.h>

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

Tensor gpu_bf16(const Tensor& t) {
  return as(t, DType::BF16, Device::CUDA);
}
Tensor host_f32(const Tensor& t) {
  return as(t, DType::F32, Device::CPU);
}

struct Case {
  int64_t N, K, r;
  double p;
  int64_t row0;
};

}  // namespace

TEST(LoraFusedCuda, MatchesTheCpuOp) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  const Case cases[] = {{77, 4096, 16, 0.1, 0},  {2061, 4096, 16, 0.05, 0}, {77, 14336, 64, 0.05, 4},
                        {301, 14336, 8, 0.0, 0}, {130, 172, 12, 0.3, 3},    {2061, 1024, 16, 0.0, 0},
                        {64, 4096, 32, 0.05, 2}, {33, 4096, 64, 0.0, 0}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "N " << c.N << " K " << c.K << " r " << c.r << " p " << c.p);
    LoraMask mk = lora_mask(777, c.row0, c.K, c.p);
    const LoraMask* m = c.p > 0 ? &mk : nullptr;
    Tensor x = round_bf16(randn({c.N, c.K})), w = round_bf16(randn({c.r, c.K}, 0.05f));
    Tensor d = round_bf16(randn({c.N, c.r})), wt = round_bf16(randn({c.K, c.r}, 0.05f));
    Tensor xg = gpu_bf16(x), dg = gpu_bf16(d);

    // out = 1.5·(m ⊙ x)·wᵀ into BF16: compare with the CPU op's result rounded to BF16.
    std::vector<double> want = qtune_test::ref_lora_down(x, w, 1.5f, m);
    Tensor oc = Tensor::empty({c.N, c.r}, DType::F32),
           og = Tensor::empty({c.N, c.r}, DType::BF16, Device::CUDA);
    lora_down(oc, x, w, 1.5f, m);
    lora_down(og, xg, gpu_bf16(w), 1.5f, m);
    double ec = rel_err(round_bf16(oc), want), eg = rel_err(host_f32(og), want);
    std::printf("N %5lld K %5lld r %2lld p %.2f  lora_down      CUDA %.2e  CPU(bf16 out) %.2e\n",
                (long long)c.N, (long long)c.K, (long long)c.r, c.p, eg, ec);
    EXPECT_LE(eg, 2 * ec + 1e-4);

    // g += 0.7·dᵀ·(m ⊙ x), g [r, K] and [K, r], F32.
    for (bool kr : {false, true}) {
      Tensor g = kr ? randn({c.K, c.r}, 0.1f) : randn({c.r, c.K}, 0.1f), gg = g.to(Device::CUDA);
      std::vector<double> wg = qtune_test::ref_lora_down_grad(g, d, x, 0.7f, m, kr);
      lora_down_grad(g, d, x, 0.7f, m, kr);
      lora_down_grad(gg, dg, xg, 0.7f, m, kr);
      ec = rel_err(g, wg);
      eg = rel_err(gg.to(Device::CPU), wg);
      std::printf("%41s lora_down_grad%s CUDA %.2e  CPU %.2e\n", "", kr ? "ᵀ" : " ", eg, ec);
      EXPECT_LE(eg, 2 * ec + 2e-6);
    }

    // dx += m ⊙ (d·wtᵀ) into F32 and BF16.
    for (DType dt : {DType::F32, DType::BF16}) {
      Tensor dx = round_bf16(randn({c.N, c.K}));
      Tensor dxg = as(dx, dt, Device::CUDA);
      std::vector<double> wd = qtune_test::ref_lora_up_dx(dx, d, wt, m);
      lora_up_dx(dx, d, wt, m);
      ec = rel_err(dt == DType::BF16 ? round_bf16(dx) : dx, wd);
      lora_up_dx(dxg, dg, gpu_bf16(wt), m);
      eg = rel_err(host_f32(dxg), wd);
      std::printf("%41s lora_up_dx %s CUDA %.2e  CPU %.2e\n", "", dtype_name(dt), eg, ec);
      EXPECT_LE(eg, 2 * ec + (dt == DType::BF16 ? 1e-4 : 2e-6));
    }
  }
}

// The kernels' masks are the CPU's, element for element: with d·wtᵀ = 1 everywhere, dx = keep or 0 exactly.
TEST(LoraFusedCuda, MasksAgreeExactly) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  for (int64_t K : {4096, 172}) {
    const int64_t N = 45, r = 16;
    LoraMask m = lora_mask(31337, 7, K, 0.3);
    std::vector<float> dv(N * r, 0.0f), wv(K * r, 0.0f);
    for (int64_t n = 0; n < N; n++) dv[n * r] = 1.0f;
    for (int64_t k = 0; k < K; k++) wv[k * r] = 1.0f;
    Tensor d = Tensor::from_f32(dv, {N, r}), wt = Tensor::from_f32(wv, {K, r});
    Tensor dx = Tensor::zeros({N, K}, DType::F32), dxg = Tensor::zeros({N, K}, DType::F32, Device::CUDA);
    lora_up_dx(dx, d, wt, &m);
    lora_up_dx(dxg, gpu_bf16(d), gpu_bf16(wt), &m);
    std::vector<float> a = dx.to_f32_vector(), b = dxg.to(Device::CPU).to_f32_vector();
    int64_t differ = 0;
    for (size_t i = 0; i < a.size(); i++) differ += a[i] != b[i];
    EXPECT_EQ(differ, 0) << "K " << K;
  }
}

TEST(LoraFusedCuda, Transpose) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  Tensor a = round_bf16(randn({16, 300})), at = Tensor::empty({300, 16}, DType::F32);
  transpose_into(at, a);
  Tensor ag = Tensor::empty({300, 16}, DType::BF16, Device::CUDA);
  transpose_into(ag, a.to(Device::CUDA));
  EXPECT_EQ(host_f32(ag).to_f32_vector(), at.to_f32_vector());
}
