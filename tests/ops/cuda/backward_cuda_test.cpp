// CUDA backward ops (rmsnorm, rope, swiglu, embedding, linear) against the CPU op of the same declaration
// on the same bf16-rounded random inputs, for F32 and BF16 storage of each tensor. Outputs are pre-filled
// with random values, so the accumulate (+=) semantics are checked too. An F32 output must be within a
// small relative norm error of the CPU op; a BF16 output follows the bf16 rule (≤ 2× the error of the CPU
// result rounded to bf16, both measured against the CPU op's f32 result).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "ops/activation.h"
#include "ops/cuda/cuda_context.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/rope.h"

namespace qtune {
namespace {
using namespace cuda_test;

using Vec = std::vector<float>;

Tensor host(const Vec& v, const Shape& s) {
  return Tensor::from_f32(v, s);
}

const char* short_name(DType dt) {
  return dt == DType::BF16 ? "bf16" : "f32";
}

// Checks the kernel's output got against the CPU op's f32 result ref; out_dt is the kernel's output type.
void check_out(const std::string& what, const Vec& got, const Vec& ref, DType out_dt, double f32_tol) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  ASSERT_EQ(count_nonfinite(got), 0u) << what << ": non-finite outputs";
  double err = rel_err(got, ref);
  if (out_dt == DType::F32) {
    expect_f32_close(what, err, f32_tol);
  } else {
    Vec rounded(ref.size());
    for (size_t i = 0; i < ref.size(); i++) rounded[i] = round_bf16(ref[i]);
    expect_bf16_rule(what, err, rel_err(rounded, ref));
  }
}

// ---------------------------------------------------------------------------------------------- RMSNorm

struct NormTypes {
  DType dx, dw, dout, x, w;
};

void rmsnorm_case(int64_t N, int64_t C, NormTypes t, bool with_dw) {
  Rng rng;
  const float eps = 1e-5f;
  Vec x = randn_bf16(rng, N * C), g = randn_bf16(rng, N * C), w = randn_bf16(rng, C, 0.5f);
  for (auto& v : w) v = round_bf16(v + 1.0f);
  Vec dx0 = randn_bf16(rng, N * C, 0.3f), dw0 = randn_bf16(rng, C, 3.0f);
  // CPU op on the same numbers.
  Tensor cdx = host(dx0, {N, C}), cdw = host(dw0, {C});
  rmsnorm_backward(cdx, with_dw ? &cdw : nullptr, host(g, {N, C}), host(x, {N, C}), host(w, {C}), eps);
  // CUDA op.
  Tensor ddx = to_device(dx0, {N, C}, t.dx), ddw = to_device(dw0, {C}, t.dw);
  rmsnorm_backward(ddx, with_dw ? &ddw : nullptr, to_device(g, {N, C}, t.dout), to_device(x, {N, C}, t.x),
                   to_device(w, {C}, t.w), eps);
  char what[160];
  std::snprintf(what, sizeof what, "rmsnorm N=%lld C=%lld dx=%s dw=%s dout=%s x=%s w=%s", (long long)N,
                (long long)C, short_name(t.dx), with_dw ? short_name(t.dw) : "-", short_name(t.dout),
                short_name(t.x), short_name(t.w));
  check_out(std::string(what) + " dx", ddx.to_f32_vector(), cdx.to_f32_vector(), t.dx, 1e-5);
  if (with_dw)
    check_out(std::string(what) + " dw", ddw.to_f32_vector(), cdw.to_f32_vector(), t.dw, 1e-5);
  else
    EXPECT_EQ(ddw.to_f32_vector(), dw0) << what << ": dweight was not asked for";
}

TEST(CudaBackward, RmsNormEveryDtypeCombination) {
  QT_REQUIRE_GPU();
  const DType ds[] = {DType::F32, DType::BF16};
  for (int64_t C : {96, 100})  // packs of eight / single elements (100 % 8 != 0)
    for (int m = 0; m < 32; m++)
      rmsnorm_case(37, C, {ds[m & 1], ds[(m >> 1) & 1], ds[(m >> 2) & 1], ds[(m >> 3) & 1], ds[(m >> 4) & 1]},
                   true);
}

TEST(CudaBackward, RmsNormLlamaWidths) {
  QT_REQUIRE_GPU();
  const DType F = DType::F32, B = DType::BF16;
  for (auto [N, C] : {std::pair<int64_t, int64_t>{37, 4096}, {512, 4096}, {5, 1000}, {3000, 96}}) {
    rmsnorm_case(N, C, {F, F, F, F, F}, true);
    rmsnorm_case(N, C, {F, F, B, B, B}, true);  // the training path: f32 residual grad, bf16 activations
    rmsnorm_case(N, C, {B, B, B, B, B}, true);
  }
  rmsnorm_case(37, 4096, {F, F, B, B, B}, false);  // frozen norm weight
}

// ------------------------------------------------------------------------------------------------- RoPE

void rope_case(int64_t N, int64_t H, int64_t D, DType dt) {
  Rng rng;
  Vec dx = randn_bf16(rng, N * H * D);
  std::vector<int32_t> pos(N);
  for (auto& p : pos) p = rng.uniform_int(0, 8191);
  Vec inv(D / 2);
  for (int64_t i = 0; i < D / 2; i++) inv[i] = (float)std::pow(500000.0, -2.0 * i / (double)D);
  Tensor cdx = host(dx, {N, H, D});
  rope_backward(cdx, Tensor::from_i32(pos, {N}), host(inv, {D / 2}));
  Tensor ddx = to_device(dx, {N, H, D}, dt);
  rope_backward(ddx, device_i32(pos, {N}), to_device(inv, {D / 2}, DType::F32));
  char what[120];
  std::snprintf(what, sizeof what, "rope N=%lld H=%lld D=%lld dx=%s", (long long)N, (long long)H,
                (long long)D, short_name(dt));
  check_out(what, ddx.to_f32_vector(), cdx.to_f32_vector(), dt, 2e-6);
}

TEST(CudaBackward, Rope) {
  QT_REQUIRE_GPU();
  for (DType dt : {DType::F32, DType::BF16}) {
    rope_case(37, 5, 64, dt);
    rope_case(256, 32, 128, dt);
    rope_case(3, 2, 6, dt);
  }
}

// ----------------------------------------------------------------------------------------------- SwiGLU

struct SwigluTypes {
  DType dgate, dup, dout, gate, up;
};

void swiglu_case(int64_t N, int64_t F, SwigluTypes t) {
  Rng rng;
  Vec g = randn_bf16(rng, N * F, 2.0f), u = randn_bf16(rng, N * F), d = randn_bf16(rng, N * F);
  Vec dg0 = randn_bf16(rng, N * F, 0.5f), du0 = randn_bf16(rng, N * F, 0.5f);
  Tensor cdg = host(dg0, {N, F}), cdu = host(du0, {N, F});
  swiglu_backward(cdg, cdu, host(d, {N, F}), host(g, {N, F}), host(u, {N, F}));
  Tensor ddg = to_device(dg0, {N, F}, t.dgate), ddu = to_device(du0, {N, F}, t.dup);
  swiglu_backward(ddg, ddu, to_device(d, {N, F}, t.dout), to_device(g, {N, F}, t.gate),
                  to_device(u, {N, F}, t.up));
  char what[160];
  std::snprintf(what, sizeof what, "swiglu N=%lld F=%lld dg=%s du=%s dout=%s g=%s u=%s", (long long)N,
                (long long)F, short_name(t.dgate), short_name(t.dup), short_name(t.dout), short_name(t.gate),
                short_name(t.up));
  check_out(std::string(what) + " dgate", ddg.to_f32_vector(), cdg.to_f32_vector(), t.dgate, 1e-6);
  check_out(std::string(what) + " dup", ddu.to_f32_vector(), cdu.to_f32_vector(), t.dup, 1e-6);
  // accumulate = false: overwritten, the old contents (here NaN) never read.
  Tensor cog = host(Vec(N * F, 0.0f), {N, F}), cou = host(Vec(N * F, 0.0f), {N, F});
  swiglu_backward(cog, cou, host(d, {N, F}), host(g, {N, F}), host(u, {N, F}));
  Tensor dog = to_device(Vec(N * F, std::nanf("")), {N, F}, t.dgate),
         dou = to_device(Vec(N * F, std::nanf("")), {N, F}, t.dup);
  swiglu_backward(dog, dou, to_device(d, {N, F}, t.dout), to_device(g, {N, F}, t.gate),
                  to_device(u, {N, F}, t.up), false);
  check_out(std::string(what) + " dgate (overwrite)", dog.to_f32_vector(), cog.to_f32_vector(), t.dgate,
            1e-6);
  check_out(std::string(what) + " dup (overwrite)", dou.to_f32_vector(), cou.to_f32_vector(), t.dup, 1e-6);
}

TEST(CudaBackward, SwigluEveryDtypeCombination) {
  QT_REQUIRE_GPU();
  const DType ds[] = {DType::F32, DType::BF16};
  for (int m = 0; m < 32; m++)
    swiglu_case(37, 96, {ds[m & 1], ds[(m >> 1) & 1], ds[(m >> 2) & 1], ds[(m >> 3) & 1], ds[(m >> 4) & 1]});
}

TEST(CudaBackward, SwigluLlamaWidths) {
  QT_REQUIRE_GPU();
  const DType F = DType::F32, B = DType::BF16;
  swiglu_case(64, 14336, {F, F, F, F, F});
  swiglu_case(64, 14336, {B, B, B, B, B});
  swiglu_case(37, 11008, {F, F, B, B, B});
  swiglu_case(1, 7, {B, F, B, F, B});
}

// -------------------------------------------------------------------------------------------- Embedding

void embedding_case(int64_t V, int64_t C, int64_t N, DType dout_dt) {
  Rng rng;
  std::vector<int32_t> ids(N);
  for (auto& i : ids) i = rng.uniform_int(0, (int)std::min<int64_t>(V - 1, 40));  // many repeats
  ids[0] = (int32_t)(V - 1);
  Vec g = randn_bf16(rng, N * C), t0 = randn_bf16(rng, V * C);
  Tensor ct = host(t0, {V, C});
  embedding_backward(ct, Tensor::from_i32(ids, {N}), host(g, {N, C}));
  Tensor dt = to_device(t0, {V, C}, DType::F32);
  embedding_backward(dt, device_i32(ids, {N}), to_device(g, {N, C}, dout_dt));
  char what[120];
  std::snprintf(what, sizeof what, "embedding V=%lld C=%lld N=%lld dout=%s", (long long)V, (long long)C,
                (long long)N, short_name(dout_dt));
  check_out(what, dt.to_f32_vector(), ct.to_f32_vector(), DType::F32, 1e-6);
}

TEST(CudaBackward, Embedding) {
  QT_REQUIRE_GPU();
  for (DType dt : {DType::F32, DType::BF16}) {
    embedding_case(1000, 96, 37, dt);
    embedding_case(2000, 4096, 512, dt);
  }
}

TEST(CudaBackward, EmbeddingBadIdLeavesTableUntouched) {
  QT_REQUIRE_GPU();
  Rng rng;
  Vec t0 = randn_bf16(rng, 10 * 8), g = randn_bf16(rng, 3 * 8);
  Tensor dt = to_device(t0, {10, 8}, DType::F32);
  expect_error(
      [&] {
        embedding_backward(dt, device_i32({1, 10, 2}, {3}), to_device(g, {3, 8}, DType::BF16));
      },
      ErrorKind::Shape, {"embedding_backward", "token id 10", "position 1"});
  EXPECT_EQ(dt.to_f32_vector(), t0);
}

// ----------------------------------------------------------------------------------------------- Linear

// dx0_scale: the size of dx's prior contents (0: dx starts at zero).
void linear_case(int64_t N, int64_t O, int64_t I, DType in_dt, DType dx_dt, bool want_dx, bool want_dw,
                 bool want_db, float dx0_scale = 0.5f) {
  Rng rng;
  Vec x = randn_bf16(rng, N * I), dy = randn_bf16(rng, N * O);
  Vec w = randn_bf16(rng, O * I, 1.0f / std::sqrt((float)I));
  Vec dx0 = randn_bf16(rng, N * I, dx0_scale), dw0 = randn_bf16(rng, O * I, 5.0f),
      db0 = randn_bf16(rng, O, 5.0f);
  Tensor cdx = host(dx0, {N, I}), cdw = host(dw0, {O, I}), cdb = host(db0, {O});
  linear_backward(want_dx ? &cdx : nullptr, want_dw ? &cdw : nullptr, want_db ? &cdb : nullptr,
                  host(dy, {N, O}), host(x, {N, I}), host(w, {O, I}));
  Tensor ddx = to_device(dx0, {N, I}, dx_dt), ddw = to_device(dw0, {O, I}, DType::F32);
  Tensor ddb = to_device(db0, {O}, DType::F32);
  linear_backward(want_dx ? &ddx : nullptr, want_dw ? &ddw : nullptr, want_db ? &ddb : nullptr,
                  to_device(dy, {N, O}, in_dt), to_device(x, {N, I}, in_dt), to_device(w, {O, I}, in_dt));
  char what[120];
  std::snprintf(what, sizeof what, "linear N=%lld O=%lld I=%lld in=%s%s", (long long)N, (long long)O,
                (long long)I, short_name(in_dt), dx0_scale == 0.0f ? " (dx from 0)" : "");
  std::string s = what;
  if (want_dx)
    check_out(s + " dx(" + short_name(dx_dt) + ")", ddx.to_f32_vector(), cdx.to_f32_vector(), dx_dt, 1e-5);
  else
    EXPECT_EQ(ddx.to_f32_vector(), dx0) << what << ": dx was not asked for";
  if (want_dw)
    check_out(s + " dw(f32)", ddw.to_f32_vector(), cdw.to_f32_vector(), DType::F32, 1e-5);
  else
    EXPECT_EQ(ddw.to_f32_vector(), dw0) << what << ": dw was not asked for";
  if (want_db)
    check_out(s + " db(f32)", ddb.to_f32_vector(), cdb.to_f32_vector(), DType::F32, 1e-5);
  else
    EXPECT_EQ(ddb.to_f32_vector(), db0) << what << ": db was not asked for";
}

TEST(CudaBackward, LinearBf16) {
  QT_REQUIRE_GPU();
  const DType F = DType::F32, B = DType::BF16;
  for (DType dx_dt : {B, F}) {
    linear_case(37, 40, 96, B, dx_dt, true, true, true);
    linear_case(300, 352, 256, B, dx_dt, true, true, true);
  }
  linear_case(512, 4096, 4096, B, F, true, true, true);  // Llama-3-8B q_proj / o_proj
  linear_case(512, 4096, 4096, B, B, true, false, false);
  linear_case(300, 352, 256, B, B, false, true, false);
  linear_case(37, 40, 96, B, F, false, false, true);
  linear_case(300, 352, 256, B, B, true, false, false, 0.0f);  // bf16 dx without prior contents
}

TEST(CudaBackward, LinearF32) {
  QT_REQUIRE_GPU();
  linear_case(300, 352, 256, DType::F32, DType::F32, true, true, true);
  linear_case(37, 19, 33, DType::F32, DType::F32, true, true, true);  // odd sizes
}

// ----------------------------------------------------------------------------------------------- Errors

TEST(CudaBackward, DtypeErrorsNameTheTensor) {
  QT_REQUIRE_GPU();
  Rng rng;
  Vec v = randn_bf16(rng, 8 * 16), w = randn_bf16(rng, 16), ww = randn_bf16(rng, 16 * 16);
  Tensor x = to_device(v, {8, 16}, DType::BF16), wt = to_device(ww, {16, 16}, DType::BF16);
  Tensor dx = to_device(v, {8, 16}, DType::F16), nw = to_device(w, {16}, DType::BF16);
  expect_error([&] { rmsnorm_backward(dx, nullptr, x, x, nw, 1e-5f); }, ErrorKind::Unsupported,
               {"rmsnorm_backward", "dx"});
  Tensor dw_bf16 = to_device(ww, {16, 16}, DType::BF16);
  expect_error([&] { linear_backward(nullptr, &dw_bf16, nullptr, x, x, wt); }, ErrorKind::Unsupported,
               {"linear_backward", "dw"});
  Tensor xf = to_device(v, {8, 16}, DType::F32);
  expect_error([&] { linear_backward(nullptr, nullptr, nullptr, x, xf, wt); }, ErrorKind::Unsupported,
               {"linear_backward", "must all be BF16 or all F32"});
}

// ------------------------------------------------------------------------------------------------ Timing

// Mean wall time of fn over iters calls after one warm-up call, in microseconds.
double time_us(const std::function<void()>& fn, int iters = 20) {
  fn();
  cuda::synchronize();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; i++) fn();
  cuda::synchronize();
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / iters;
}

// Llama-3-8B shapes, 4096 tokens, the training dtypes. Not a check: prints times (run with
// --gtest_also_run_disabled_tests).
TEST(CudaBackward, DISABLED_Timing8BShapes) {
  QT_REQUIRE_GPU();
  const int64_t N = 4096, C = 4096, F = 14336, H = 32, D = 128;
  const DType B = DType::BF16, F32 = DType::F32;
  Rng rng;
  auto dev = [&](int64_t n, const Shape& s, DType dt, float scale = 1.0f) {
    return to_device(randn_bf16(rng, n, scale), s, dt);
  };
  Tensor dx = dev(N * C, {N, C}, F32), g = dev(N * C, {N, C}, B), x = dev(N * C, {N, C}, B);
  Tensor w = dev(C, {C}, B), dw = dev(C, {C}, F32);
  double t = time_us([&] { rmsnorm_backward(dx, &dw, g, x, w, 1e-5f); });
  std::printf("  rmsnorm_backward N=%lld C=%lld (dx f32, dw f32, dout/x/w bf16): %.1f us, %.0f GB/s\n",
              (long long)N, (long long)C, t, (double)N * C * 12 / t / 1e3);
  Tensor dg = dev(N * F, {N, F}, B), du = dev(N * F, {N, F}, B), d = dev(N * F, {N, F}, B);
  Tensor ga = dev(N * F, {N, F}, B), up = dev(N * F, {N, F}, B);
  t = time_us([&] { swiglu_backward(dg, du, d, ga, up); });
  std::printf("  swiglu_backward N=%lld F=%lld (all bf16): %.1f us, %.0f GB/s\n", (long long)N, (long long)F,
              t, (double)N * F * 14 / t / 1e3);
  Tensor q = dev(N * H * D, {N, H, D}, B);
  std::vector<int32_t> pos(N);
  for (int64_t i = 0; i < N; i++) pos[i] = (int32_t)i;
  Vec inv(D / 2);
  for (int64_t i = 0; i < D / 2; i++) inv[i] = (float)std::pow(500000.0, -2.0 * i / (double)D);
  Tensor pd = device_i32(pos, {N}), invd = to_device(inv, {D / 2}, F32);
  t = time_us([&] { rope_backward(q, pd, invd); });
  std::printf("  rope_backward N=%lld H=%lld D=%lld (bf16): %.1f us, %.0f GB/s\n", (long long)N, (long long)H,
              (long long)D, t, (double)N * H * D * 4 / t / 1e3);
  for (auto [O, I] : {std::pair<int64_t, int64_t>{4096, 4096}, {14336, 4096}, {4096, 14336}}) {
    Tensor lx = dev(N * I, {N, I}, B), ly = dev(N * O, {N, O}, B), lw = dev(O * I, {O, I}, B, 0.01f);
    Tensor ldx = dev(N * I, {N, I}, F32), ldw = dev(O * I, {O, I}, F32);
    double flop = 2.0 * N * O * I;
    t = time_us([&] { linear_backward(&ldx, nullptr, nullptr, ly, lx, lw); }, 10);
    std::printf("  linear_backward dx N=%lld O=%lld I=%lld (bf16 in, f32 dx): %.1f us, %.0f TFLOP/s\n",
                (long long)N, (long long)O, (long long)I, t, flop / t / 1e6);
    t = time_us([&] { linear_backward(nullptr, &ldw, nullptr, ly, lx, lw); }, 10);
    std::printf("  linear_backward dw N=%lld O=%lld I=%lld (bf16 in, f32 dw): %.1f us, %.0f TFLOP/s\n",
                (long long)N, (long long)O, (long long)I, t, flop / t / 1e6);
    Tensor ldxb = dev(N * I, {N, I}, B);
    t = time_us([&] { linear_backward(&ldxb, nullptr, nullptr, ly, lx, lw); }, 10);
    std::printf("  linear_backward dx N=%lld O=%lld I=%lld (bf16 in, bf16 dx): %.1f us, %.0f TFLOP/s\n",
                (long long)N, (long long)O, (long long)I, t, flop / t / 1e6);
  }
}

}  // namespace
}  // namespace qtune
