// CUDA RMSNorm, RoPE, SwiGLU, residual add, dtype conversion and embedding gather against float64 (or
// exact) references on fresh random inputs at Llama-3-8B widths. bf16 baselines round where a PyTorch bf16
// implementation rounds (HF: normalised x rounded before the weight; cos/sin and each product rounded).
#include <gtest/gtest.h>

#include <cmath>

#include "cuda_test_util.h"
#include "ops/activation.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/norm.h"
#include "ops/rope.h"

namespace qtune {
namespace {
using namespace cuda_test;

void rmsnorm_case(int64_t N, int64_t C, DType xdt, DType wdt, DType odt) {
  Rng rng;
  auto x = randn_bf16(rng, N * C, 3.0f);
  auto w = randn_bf16(rng, C, 0.2f);
  for (auto& v : w) v = round_bf16(v + 1.0f);
  const float eps = 1e-5f;
  Tensor out = poisoned({N, C}, odt);
  cuda::rmsnorm_forward(out, to_device(x, {N, C}, xdt), to_device(w, {C}, wdt), eps);
  auto got = out.to_f32_vector();
  ASSERT_EQ(count_nonfinite(got), 0u);
  std::vector<double> ref(N * C), bf(N * C);
  for (int64_t n = 0; n < N; n++) {
    double ss = 0;
    for (int64_t c = 0; c < C; c++) ss += (double)x[n * C + c] * x[n * C + c];
    double r = 1.0 / std::sqrt(ss / C + eps);
    for (int64_t c = 0; c < C; c++) {
      ref[n * C + c] = x[n * C + c] * r * w[c];
      bf[n * C + c] = round_bf16d(round_bf16d(x[n * C + c] * r) * w[c]);
    }
  }
  std::string what = std::string("rmsnorm ") + std::to_string(N) + "x" + std::to_string(C) + " " +
                     dtype_name(xdt) + "," + dtype_name(wdt) + "->" + dtype_name(odt);
  double err = rel_err(got, ref);
  if (xdt == DType::F32 && odt == DType::F32)
    expect_f32_close(what, err, 1e-6);
  else if (odt == DType::F32)
    expect_f32_close(what, err, 1e-6);  // bf16 inputs, exact up to f32 math
  else
    expect_bf16_rule(what, err, rel_err(bf, ref));
}

TEST(CudaElementwise, RmsNorm) {
  QT_REQUIRE_GPU();
  rmsnorm_case(7, 4096, DType::BF16, DType::BF16, DType::BF16);
  rmsnorm_case(3, 4096, DType::BF16, DType::BF16, DType::F32);
  rmsnorm_case(5, 1000, DType::F32, DType::F32, DType::F32);
  rmsnorm_case(3, 1001, DType::BF16, DType::BF16, DType::BF16);  // single elements (1001 % 8 != 0)
  rmsnorm_case(64, 2048, DType::F32, DType::BF16, DType::BF16);
}

TEST(CudaElementwise, RmsNormMatchesCpuOp) {
  QT_REQUIRE_GPU();
  Rng rng;
  const int64_t N = 6, C = 4096;
  auto x = randn_bf16(rng, N * C), w = randn_bf16(rng, C);
  Tensor out = poisoned({N, C}, DType::F32), cpu_out = Tensor::empty({N, C}, DType::F32);
  cuda::rmsnorm_forward(out, to_device(x, {N, C}, DType::BF16), to_device(w, {C}, DType::BF16), 1e-5f);
  rmsnorm_forward(cpu_out, Tensor::from_f32(x, {N, C}), Tensor::from_f32(w, {C}), 1e-5f);
  double diff = rel_err(out.to_f32_vector(), cpu_out.to_f32_vector());
  std::printf("  rmsnorm vs CPU op: rel diff %.3e\n", diff);
  EXPECT_LE(diff, 1e-6);
}

void rope_case(int64_t N, int64_t H, int64_t D, DType dt) {
  Rng rng;
  auto x = randn_bf16(rng, N * H * D);
  std::vector<int32_t> pos(N);
  for (auto& p : pos) p = rng.uniform_int(0, 8191);
  std::vector<float> inv(D / 2);
  for (int64_t i = 0; i < D / 2; i++) inv[i] = (float)std::pow(500000.0, -2.0 * i / D);
  Tensor xd = to_device(x, {N, H, D}, dt);
  cuda::rope_forward(xd, device_i32(pos, {N}), Tensor::from_f32(inv, {D / 2}).to(Device::CUDA));
  auto got = xd.to_f32_vector();
  ASSERT_EQ(count_nonfinite(got), 0u);
  std::vector<double> ref(x.size()), bf(x.size());
  for (int64_t n = 0; n < N; n++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < D / 2; i++) {
        double a = (double)((float)pos[n] * inv[i]);  // the f32 angle, as HF and the kernel form it
        double c = std::cos(a), s = std::sin(a);
        int64_t o = (n * H + h) * D;
        double x1 = x[o + i], x2 = x[o + i + D / 2];
        ref[o + i] = x1 * c - x2 * s;
        ref[o + i + D / 2] = x2 * c + x1 * s;
        double cb = round_bf16d(c), sb = round_bf16d(s);
        bf[o + i] = round_bf16d(round_bf16d(x1 * cb) - round_bf16d(x2 * sb));
        bf[o + i + D / 2] = round_bf16d(round_bf16d(x2 * cb) + round_bf16d(x1 * sb));
      }
  std::string what = "rope N" + std::to_string(N) + " H" + std::to_string(H) + " D" + std::to_string(D) +
                     " " + dtype_name(dt);
  double err = rel_err(got, ref);
  if (dt == DType::F32)
    expect_f32_close(what, err, 1e-6);
  else
    expect_bf16_rule(what, err, rel_err(bf, ref));
}

TEST(CudaElementwise, Rope) {
  QT_REQUIRE_GPU();
  rope_case(9, 32, 128, DType::BF16);
  rope_case(17, 8, 128, DType::BF16);
  rope_case(5, 4, 64, DType::F32);
  rope_case(3, 2, 12, DType::BF16);  // half = 6: single rotations
}

TEST(CudaElementwise, SwiGlu) {
  QT_REQUIRE_GPU();
  Rng rng;
  const int64_t N = 5;
  for (int64_t F : {14336L, 1001L}) {  // packs of eight / single elements
    auto g = randn_bf16(rng, N * F, 2.0f), u = randn_bf16(rng, N * F);
    Tensor gd = to_device(g, {N, F}, DType::BF16), ud = to_device(u, {N, F}, DType::BF16);
    Tensor out = poisoned({N, F}, DType::BF16), out32 = poisoned({N, F}, DType::F32);
    cuda::swiglu_forward(out, gd, ud);
    cuda::swiglu_forward(out32, gd, ud);
    std::vector<double> ref(N * F), bf(N * F);
    for (int64_t i = 0; i < N * F; i++) {
      double silu = g[i] / (1.0 + std::exp(-(double)g[i]));
      ref[i] = silu * u[i];
      bf[i] = round_bf16d(round_bf16d(silu) * u[i]);
    }
    auto got = out.to_f32_vector(), got32 = out32.to_f32_vector();
    ASSERT_EQ(count_nonfinite(got) + count_nonfinite(got32), 0u);
    expect_bf16_rule("swiglu bf16", rel_err(got, ref), rel_err(bf, ref));
    expect_f32_close("swiglu bf16->f32", rel_err(got32, ref), 1e-6);
    Tensor cpu_out = Tensor::empty({N, F}, DType::F32);
    swiglu_forward(cpu_out, Tensor::from_f32(g, {N, F}), Tensor::from_f32(u, {N, F}));
    double diff = rel_err(got32, cpu_out.to_f32_vector());
    std::printf("  swiglu vs CPU op: rel diff %.3e\n", diff);
    EXPECT_LE(diff, 1e-6);
  }
}

TEST(CudaElementwise, AddInplace) {
  QT_REQUIRE_GPU();
  Rng rng;
  const int64_t N = 3;
  for (int64_t C : {4096L, 1001L})  // packs of eight / single elements
    for (DType dt : {DType::BF16, DType::F32}) {
      auto x = randn_bf16(rng, N * C), y = randn_bf16(rng, N * C);
      Tensor xd = to_device(x, {N, C}, dt);
      cuda::add_inplace(xd, to_device(y, {N, C}, dt));
      auto got = xd.to_f32_vector();
      std::vector<double> ref(N * C), bf(N * C);
      for (int64_t i = 0; i < N * C; i++) {
        ref[i] = (double)x[i] + y[i];
        bf[i] = round_bf16d(ref[i]);
      }
      if (dt == DType::BF16)
        expect_bf16_rule("add 3x4096 bf16", rel_err(got, ref), rel_err(bf, ref));
      else
        expect_f32_close("add 3x4096 f32", rel_err(got, ref), 1e-7);
    }
}

TEST(CudaElementwise, ConvertIsExactRounding) {
  QT_REQUIRE_GPU();
  Rng rng;
  for (int64_t n : {10007L, 16384L}) {  // single elements / packs of eight
    std::vector<float> x(n);
    for (auto& v : x) v = rng.normal() * 100.0f;
    Tensor x32 = to_device(x, {n}, DType::F32);
    for (DType dt : {DType::BF16, DType::F16}) {
      Tensor low = poisoned({n}, dt);
      cuda::convert(low, x32);
      std::vector<uint16_t> got(n);
      copy_bytes(got.data(), Device::CPU, low.raw(), Device::CUDA, n * 2);
      size_t bad = 0;
      for (int64_t i = 0; i < n; i++)
        bad += got[i] != (dt == DType::BF16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]));
      EXPECT_EQ(bad, 0u) << "f32 -> " << dtype_name(dt) << " differs from round-to-nearest-even";
      Tensor back = poisoned({n}, DType::F32);
      cuda::convert(back, low);
      auto b = back.to_f32_vector();
      for (int64_t i = 0; i < n; i++) {
        float want = dt == DType::BF16 ? bf16_to_f32(got[i]) : f16_to_f32(got[i]);
        if (b[i] != want) {
          ADD_FAILURE() << dtype_name(dt) << " -> f32 at " << i << ": " << b[i] << " vs " << want;
          break;
        }
      }
    }
    Tensor bf = to_device(x, {n}, DType::BF16), hf = poisoned({n}, DType::F16);
    cuda::convert(hf, bf);
    auto h = hf.to_f32_vector(), bv = bf.to_f32_vector();
    for (int64_t i = 0; i < n; i++)
      if (h[i] != f16_to_f32(f32_to_f16(bv[i]))) {
        ADD_FAILURE() << "bf16 -> f16 at " << i;
        break;
      }
    std::printf("  convert f32<->bf16/f16, bf16->f16: %lld values bit-exact\n", (long long)n);
  }
}

TEST(CudaElementwise, EmbeddingGather) {
  QT_REQUIRE_GPU();
  Rng rng;
  const int64_t V = 3000, C = 4096, N = 37;
  auto table = randn_bf16(rng, V * C);
  std::vector<int32_t> ids(N);
  for (auto& i : ids) i = rng.uniform_int(0, (int)V - 1);
  Tensor td = to_device(table, {V, C}, DType::BF16), idd = device_i32(ids, {N});
  for (DType odt : {DType::BF16, DType::F32}) {
    Tensor out = poisoned({N, C}, odt);
    cuda::embedding_forward(out, idd, td);
    auto got = out.to_f32_vector();
    size_t bad = 0;
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = 0; c < C; c++) bad += got[n * C + c] != table[ids[n] * C + c];
    EXPECT_EQ(bad, 0u) << "embedding rows differ (out " << dtype_name(odt) << ")";
  }
  std::printf("  embedding %lld ids from [%lld, %lld]: exact\n", (long long)N, (long long)V, (long long)C);
  ids[11] = (int32_t)V + 5;
  Tensor bad_ids = device_i32(ids, {N});
  Tensor out = poisoned({N, C}, DType::BF16);
  expect_error([&] { cuda::embedding_forward(out, bad_ids, td); }, ErrorKind::Shape,
               {"token id 3005", "position 11", "[0, 3000)"});
}

TEST(CudaElementwise, BadArgumentsThrow) {
  QT_REQUIRE_GPU();
  Tensor x = Tensor::zeros({2, 64}, DType::BF16, Device::CUDA);
  Tensor w = Tensor::zeros({63}, DType::BF16, Device::CUDA);
  Tensor out = Tensor::empty({2, 64}, DType::BF16, Device::CUDA);
  expect_error([&] { cuda::rmsnorm_forward(out, x, w, 1e-5f); }, ErrorKind::Shape,
               {"rmsnorm_forward", "[63]"});
  Tensor x3 = Tensor::zeros({2, 4, 64}, DType::BF16, Device::CUDA);
  Tensor pos = Tensor::zeros({2}, DType::F32, Device::CUDA);
  Tensor inv = Tensor::zeros({32}, DType::F32, Device::CUDA);
  expect_error([&] { cuda::rope_forward(x3, pos, inv); }, ErrorKind::Unsupported, {"positions", "I32"});
  Tensor i8 = Tensor::zeros({2, 64}, DType::I8, Device::CUDA);
  expect_error([&] { cuda::swiglu_forward(out, i8, i8); }, ErrorKind::Unsupported, {"swiglu_forward", "I8"});
}

}  // namespace
}  // namespace qtune
