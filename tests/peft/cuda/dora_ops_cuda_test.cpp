// peft/dora_ops on CUDA against the CPU op (itself tested against float64, dora_ops_test.cpp) on the same
// random inputs, at shapes that do not divide the kernels' tiles: row norms from a BF16 and an F32 weight,
// the combine into BF16 and F32 outputs (with a BF16 bias), the magnitude gradient's finish.
#include <gtest/gtest.h>

#include "../../ops/op_test_util.h"
#include "core/allocator.h"
#include "ops/elementwise.h"
#include "peft/dora_ops.h"

using namespace qtune;
using qtune_test::as;
using qtune_test::randn;
using qtune_test::round_bf16;
using qtune_test::rel_err;
using qtune_test::to_f64;

namespace {


}  // namespace

TEST(DoraOpsCuda, MatchTheCpuOps) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  const int64_t O = 301, I = 1000, r = 12, N = 77;
  const float s = 2.0f;
  Tensor w = round_bf16(randn({O, I}, 0.05f)), a = randn({r, I}, 0.05f), b = randn({O, r}, 0.05f);
  Tensor norm = Tensor::empty({O}, DType::F32);
  dora_weight_norm(norm, w, a, b, s);
  for (DType wt : {DType::BF16, DType::F32}) {
    Tensor ng = Tensor::empty({O}, DType::F32, Device::CUDA);
    dora_weight_norm(ng, as(w, wt, Device::CUDA), a.to(Device::CUDA), b.to(Device::CUDA), s);
    const double err = rel_err(ng.to(Device::CPU), to_f64(norm));
    std::printf("dora_weight_norm CUDA (%s weight) vs CPU: %.2e\n", dtype_name(wt), err);
    EXPECT_LT(err, 1e-6);
  }
  Tensor m = randn({O}, 0.3f, 1.0f), d = Tensor::empty({O}, DType::F32);
  dora_scale(d, m, norm);
  Tensor dg = Tensor::empty({O}, DType::F32, Device::CUDA);
  dora_scale(dg, m.to(Device::CUDA), norm.to(Device::CUDA));
  EXPECT_LT(rel_err(dg.to(Device::CPU), to_f64(d)), 1e-6);

  Tensor bias = round_bf16(randn({O})), bias_g = as(bias, DType::BF16, Device::CUDA);
  for (DType ot : {DType::BF16, DType::F32}) {
    for (bool alias : {false, true}) {
      Tensor out = round_bf16(randn({N, O})), t = alias ? out : round_bf16(randn({N, O})), u = randn({N, O});
      Tensor want = out.clone();
      dora_combine(want, alias ? want : t, u, d, &bias);
      Tensor og = as(out, ot, Device::CUDA), tg = alias ? og : as(t, ot, Device::CUDA);
      dora_combine(og, tg, u.to(Device::CUDA), d.to(Device::CUDA), &bias_g);
      const double err = rel_err(as(og, DType::F32, Device::CPU), to_f64(want));
      std::printf("dora_combine CUDA (%s out, t %s) vs CPU: %.2e\n", dtype_name(ot), alias ? "= out" : "apart", err);
      EXPECT_LT(err, ot == DType::BF16 ? 8e-3 : 1e-6);
    }
  }
  Tensor gm = randn({O}), cy = randn({O}), cdy = randn({O}), p = randn({O, r});
  Tensor gmg = gm.to(Device::CUDA), cdy_g = cdy.to(Device::CUDA);
  dora_magnitude_grad(gm, cy, &cdy, &bias, p, b, s, norm);
  dora_magnitude_grad(gmg, cy.to(Device::CUDA), &cdy_g, &bias_g,
                      p.to(Device::CUDA), b.to(Device::CUDA), s, norm.to(Device::CUDA));
  EXPECT_LT(rel_err(gmg.to(Device::CPU), to_f64(gm)), 1e-6);
}
