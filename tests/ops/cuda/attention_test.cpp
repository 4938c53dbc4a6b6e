// CUDA attention_forward (tensor-core prefill kernel and split-K decode kernel) against a float64
// reference on fresh random inputs: prefill, chunked prefill with a cache prefix, decode over long caches
// (several key slices merged), GQA and MHA, head dims 64/96/128/256, f32 inputs; cache rows past kv_len are
// NaN so any read of them shows. bf16 rule baseline: scores, probabilities and output rounded to bf16.
#include "ops/attention.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "cuda_test_util.h"
#include "ops/cuda/cuda_graph.h"
#include "ops/cuda/cuda_ops.h"

namespace qtune {
namespace {
using namespace cuda_test;

struct AttnCase {
  int64_t B, T, Hq, Hkv, D, Smax, q_offset, kv_len;
  DType dt = DType::BF16;
  DType out_dt = DType::BF16;
  bool force_split = false;
};

std::string name_of(const AttnCase& c) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "attn B%lld T%lld H%lld/%lld D%lld off%lld kv%lld %s->%s%s", (long long)c.B,
                (long long)c.T, (long long)c.Hq, (long long)c.Hkv, (long long)c.D, (long long)c.q_offset,
                (long long)c.kv_len, dtype_name(c.dt), dtype_name(c.out_dt), c.force_split ? " [split]" : "");
  return buf;
}

// Float64 attention; with bf16_math, the scores, probabilities and output are rounded to bf16 as a
// PyTorch bf16 eager implementation would round them.
std::vector<double> reference(const AttnCase& c, const std::vector<float>& q, const std::vector<float>& k,
                              const std::vector<float>& v, bool bf16_math) {
  const int64_t G = c.Hq / c.Hkv, B = c.B, T = c.T, Hq = c.Hq, Hkv = c.Hkv, D = c.D, S = c.Smax;
  std::vector<double> out(B * T * Hq * D, 0.0);
  const double scale = 1.0 / std::sqrt((double)D);
  std::vector<double> sc(c.kv_len);
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < Hq; h++) {
        int64_t hk = h / G, n = std::min(c.kv_len, c.q_offset + t + 1);
        const float* qr = &q[((b * T + t) * Hq + h) * D];
        double mx = -1e300;
        for (int64_t s = 0; s < n; s++) {
          const float* kr = &k[((b * S + s) * Hkv + hk) * D];
          double a = 0;
          for (int64_t d = 0; d < D; d++) a += (double)qr[d] * kr[d];
          a *= scale;
          if (bf16_math) a = round_bf16d(a);
          sc[s] = a;
          mx = std::max(mx, a);
        }
        double sum = 0;
        for (int64_t s = 0; s < n; s++) sum += (sc[s] = std::exp(sc[s] - mx));
        double* o = &out[((b * T + t) * Hq + h) * D];
        for (int64_t s = 0; s < n; s++) {
          double p = sc[s] / sum;
          if (bf16_math) p = round_bf16d(p);
          const float* vr = &v[((b * S + s) * Hkv + hk) * D];
          for (int64_t d = 0; d < D; d++) o[d] += p * vr[d];
        }
        if (bf16_math)
          for (int64_t d = 0; d < D; d++) o[d] = round_bf16d(o[d]);
      }
  return out;
}

struct AttnRun {
  std::vector<float> got;
  std::vector<double> ref, bf16;
};

AttnRun run_case(const AttnCase& c) {
  Rng rng;
  const int64_t nq = c.B * c.T * c.Hq * c.D, nk = c.B * c.Smax * c.Hkv * c.D;
  auto q = randn_bf16(rng, nq);
  auto k = randn_bf16(rng, nk);
  auto v = randn_bf16(rng, nk);
  // Cache rows at or past kv_len hold NaN: a kernel that reads them (even to multiply by 0) fails.
  for (int64_t b = 0; b < c.B; b++)
    for (int64_t s = c.kv_len; s < c.Smax; s++)
      for (int64_t i = 0; i < c.Hkv * c.D; i++) {
        k[((b * c.Smax + s) * c.Hkv) * c.D + i] = NAN;
        v[((b * c.Smax + s) * c.Hkv) * c.D + i] = NAN;
      }
  Tensor qd = to_device(q, {c.B, c.T, c.Hq, c.D}, c.dt);
  Tensor kd = to_device(k, {c.B, c.Smax, c.Hkv, c.D}, c.dt);
  Tensor vd = to_device(v, {c.B, c.Smax, c.Hkv, c.D}, c.dt);
  Tensor out = poisoned({c.B, c.T, c.Hq, c.D}, c.out_dt);
  cuda::attention_forward_split(out, qd, kd, vd, c.q_offset, c.kv_len, c.force_split);
  AttnRun r;
  r.got = out.to_f32_vector();
  r.ref = reference(c, q, k, v, false);
  r.bf16 = reference(c, q, k, v, true);
  return r;
}

void check_case(const AttnCase& c) {
  AttnRun r = run_case(c);
  ASSERT_EQ(count_nonfinite(r.got), 0u) << name_of(c) << ": unwritten (NaN-poisoned) or non-finite outputs";
  double err = rel_err(r.got, r.ref);
  if (c.dt == DType::F32)
    expect_f32_close(name_of(c), err, 1e-5);
  else
    expect_bf16_rule(name_of(c), err, rel_err(r.bf16, r.ref));
}

TEST(CudaAttention, Prefill8BShapes) {
  QT_REQUIRE_GPU();
  check_case({1, 200, 32, 8, 128, 256, 0, 200});                                  // tensor-core kernel
  check_case({1, 200, 32, 8, 128, 256, 0, 200, DType::BF16, DType::BF16, true});  // same on split-K
  check_case({2, 64, 8, 8, 128, 64, 0, 64, DType::BF16, DType::F32});             // MHA, f32 out
}

TEST(CudaAttention, ChunkedPrefillWithCachePrefix) {
  QT_REQUIRE_GPU();
  check_case({2, 77, 8, 2, 64, 128, 30, 107});  // D 64; queries start at position 30
  check_case({1, 33, 16, 4, 128, 300, 250, 283});
  check_case({1, 20, 4, 1, 64, 40, 5, 25, DType::BF16, DType::BF16, true});
}

TEST(CudaAttention, Decode) {
  QT_REQUIRE_GPU();
  check_case({2, 1, 32, 8, 128, 1024, 999, 1000});   // split over keys, merged
  check_case({1, 1, 32, 8, 128, 8192, 7999, 8000});  // long cache: many slices
  check_case({3, 1, 8, 8, 64, 40, 16, 17});          // short, MHA
  check_case({1, 4, 32, 8, 128, 600, 500, 504});     // a few new tokens (speculative / small chunk)
}

TEST(CudaAttention, OtherHeadDimsAndF32) {
  QT_REQUIRE_GPU();
  check_case({1, 40, 4, 2, 16, 48, 0, 40});   // small test-model shapes: D 16 on the tensor cores
  check_case({2, 70, 8, 2, 32, 80, 3, 73});   // D 32 (the bundled model)
  check_case({1, 50, 12, 4, 96, 64, 0, 50});  // D 96 on the tensor cores
  check_case({1, 30, 8, 2, 8, 32, 0, 30});    // D 8: split-K only
  check_case({2, 1, 4, 2, 16, 100, 60, 61});  // D 16 decode
  check_case({1, 5, 12, 4, 96, 64, 40, 45});
  check_case({1, 3, 8, 2, 256, 300, 200, 203});
  check_case({1, 24, 8, 2, 256, 64, 0, 24});
  check_case({1, 40, 8, 2, 128, 64, 0, 40, DType::F32, DType::F32});
  check_case({2, 1, 8, 2, 64, 2048, 1500, 1501, DType::F32, DType::F32});
}

TEST(CudaAttention, MatchesCpuOp) {
  QT_REQUIRE_GPU();
  Rng rng;
  const int64_t B = 1, T = 19, Hq = 8, Hkv = 2, D = 64, S = 32, off = 6, kv = 25;
  auto q = randn_bf16(rng, B * T * Hq * D), k = randn_bf16(rng, B * S * Hkv * D),
       v = randn_bf16(rng, B * S * Hkv * D);
  Tensor out = poisoned({B, T, Hq, D}, DType::F32);
  cuda::attention_forward(out, to_device(q, {B, T, Hq, D}, DType::BF16),
                          to_device(k, {B, S, Hkv, D}, DType::BF16),
                          to_device(v, {B, S, Hkv, D}, DType::BF16), off, kv);
  Tensor cpu_out = Tensor::empty({B, T, Hq, D}, DType::F32);
  attention_forward(cpu_out, Tensor::from_f32(q, {B, T, Hq, D}), Tensor::from_f32(k, {B, S, Hkv, D}),
                    Tensor::from_f32(v, {B, S, Hkv, D}), off, kv);
  double diff = rel_err(out.to_f32_vector(), cpu_out.to_f32_vector());
  std::printf("  attention vs CPU op (bf16 P on the tensor cores): rel diff %.3e\n", diff);
  EXPECT_LE(diff, 1e-2);
}

// attention_rope_forward_at (decode at a device-held position, RoPE and the cache write folded in) against
// rope_forward on q and the new k, the row copied into the caches, then attention_forward_at: the same bits
// in the output and in both caches. Positions in the first slice, at a slice boundary and deep in a long
// cache (angles of thousands of radians); GQA and MHA; head dims 64 and 128; bf16 and f32.
TEST(CudaAttention, RopeFoldedIntoDecodeAtEqualsRopeThenAttention) {
  QT_REQUIRE_GPU();
  Rng rng;
  struct Case {
    int64_t Hq, Hkv, D, Smax, pos;
    DType dt;
  };
  for (const Case& c : {Case{32, 8, 128, 1024, 5, DType::BF16}, Case{32, 8, 128, 1024, 511, DType::BF16},
                        Case{14, 2, 64, 9000, 8999, DType::BF16}, Case{8, 8, 64, 300, 257, DType::BF16},
                        Case{8, 2, 64, 700, 600, DType::F32}}) {
    SCOPED_TRACE("H" + std::to_string(c.Hq) + "/" + std::to_string(c.Hkv) + " D" + std::to_string(c.D) +
                 " Smax " + std::to_string(c.Smax) + " pos " + std::to_string(c.pos) + " " +
                 dtype_name(c.dt));
    const int64_t Hq = c.Hq, Hkv = c.Hkv, D = c.D, S = c.Smax, row = Hkv * D;
    std::vector<float> inv((size_t)(D / 2));
    for (int64_t i = 0; i < D / 2; i++) inv[(size_t)i] = (float)std::pow(500000.0, -2.0 * i / D);
    Tensor inv_freq = Tensor::from_f32(inv, {D / 2}).to(Device::CUDA);
    Tensor pos = device_i32({(int32_t)c.pos}, {1});
    const std::vector<float> qv = randn_bf16(rng, Hq * D), kn = randn_bf16(rng, row),
                             vn = randn_bf16(rng, row), kc = randn_bf16(rng, S * row),
                             vc = randn_bf16(rng, S * row);
    Tensor q = to_device(qv, {1, 1, Hq, D}, c.dt), k_new = to_device(kn, {1, row}, c.dt),
           v_new = to_device(vn, {1, row}, c.dt);
    Tensor k1 = to_device(kc, {1, S, Hkv, D}, c.dt), v1 = to_device(vc, {1, S, Hkv, D}, c.dt);
    Tensor k2 = to_device(kc, {1, S, Hkv, D}, c.dt), v2 = to_device(vc, {1, S, Hkv, D}, c.dt);
    Tensor ws = Tensor::empty({std::max<int64_t>(cuda::attention_at_workspace_floats(q, k1), 1)}, DType::F32,
                              Device::CUDA);
    Tensor got = Tensor::empty({1, 1, Hq, D}, c.dt, Device::CUDA),
           want = Tensor::empty({1, 1, Hq, D}, c.dt, Device::CUDA);
    cuda::attention_rope_forward_at(got, q, &k_new, &v_new, k1, v1, pos, &inv_freq, ws);
    // The reference: RoPE on copies of q and k_new, the row written, attention at the position.
    Tensor qr = to_device(qv, {1, Hq, D}, c.dt), kr = to_device(kn, {1, Hkv, D}, c.dt);
    cuda::rope_forward(qr, pos, inv_freq);
    cuda::rope_forward(kr, pos, inv_freq);
    const size_t rb = dtype_nbytes(c.dt, row);
    cuda::copy_device_async(static_cast<char*>(k2.raw()) + c.pos * rb, kr.raw(), rb);
    cuda::copy_device_async(static_cast<char*>(v2.raw()) + c.pos * rb, v_new.raw(), rb);
    cuda::attention_forward_at(want, qr.reshape({1, 1, Hq, D}), k2, v2, pos, ws);
    EXPECT_EQ(got.to_f32_vector(), want.to_f32_vector());
    EXPECT_EQ(k1.to_f32_vector(), k2.to_f32_vector());
    EXPECT_EQ(v1.to_f32_vector(), v2.to_f32_vector());
    EXPECT_EQ(q.to_f32_vector(), to_device(qv, {1, 1, Hq, D}, c.dt).to_f32_vector()) << "q must stay";
  }
  Tensor q = Tensor::zeros({1, 1, 4, 64}, DType::BF16, Device::CUDA),
         k = Tensor::zeros({1, 8, 2, 64}, DType::BF16, Device::CUDA);
  Tensor v = k, out = Tensor::empty({1, 1, 4, 64}, DType::BF16, Device::CUDA), pos = device_i32({3}, {1});
  Tensor inv = Tensor::zeros({32}, DType::F32, Device::CUDA),
         ws = Tensor::empty({4096}, DType::F32, Device::CUDA);
  Tensor short_k = Tensor::zeros({1, 64}, DType::BF16, Device::CUDA);
  expect_error([&] { cuda::attention_rope_forward_at(out, q, &short_k, &short_k, k, v, pos, &inv, ws); },
               ErrorKind::Shape, {"k_new", "Hkv · D = 128"});
  expect_error([&] { cuda::attention_rope_forward_at(out, q, &short_k, nullptr, k, v, pos, &inv, ws); },
               ErrorKind::Usage, {"v_new"});
}

TEST(CudaAttention, BadArgumentsThrow) {
  QT_REQUIRE_GPU();
  Tensor q = Tensor::zeros({1, 2, 4, 80}, DType::BF16, Device::CUDA);
  Tensor k = Tensor::zeros({1, 8, 2, 80}, DType::BF16, Device::CUDA);
  Tensor out = Tensor::empty({1, 2, 4, 80}, DType::BF16, Device::CUDA);
  expect_error([&] { cuda::attention_forward(out, q, k, k, 0, 2); }, ErrorKind::Unsupported,
               {"head dim 80", "64, 96, 128, 256"});
  Tensor k3 = Tensor::zeros({1, 8, 3, 80}, DType::BF16, Device::CUDA);
  expect_error([&] { cuda::attention_forward(out, q, k3, k3, 0, 2); }, ErrorKind::Shape, {"multiple of Hkv"});
  expect_error([&] { cuda::attention_forward(out, q, k, k, 0, 9); }, ErrorKind::Shape, {"kv_len 9"});
}

}  // namespace
}  // namespace qtune
