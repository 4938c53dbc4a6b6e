// CUDA training attention (attention_forward_train, attention_backward) against the CPU ops of the same
// declarations on fresh random inputs: odd lengths, MHA and GQA 4:1, head dims 32/64/96/128 on the
// tensor cores and 16 / f32 inputs on the simple kernels, with and without packed sequences (seq_ids),
// gradients accumulated into F32 and BF16 tensors. Measures: relative norm error of out, lse, dq, dk, dv.
// bf16 rule: the kernel's error against the CPU op (f32 math on the same bf16-valued inputs) is at most
// 2× (+ 1e-4) the error of the same math done with PyTorch-eager bf16 roundings (scores, P, out, dP, dS
// and each gradient rounded to bf16), computed here in float64.
// Also a timing printout for the Llama-3-8B shape (B 1, T 2048, Hq 32, Hkv 8, D 128), not an assertion.
#include "ops/cuda/attention_train.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "cuda_test_util.h"
#include "ops/attention.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"

namespace qtune {
namespace {
using namespace cuda_test;

struct TrainCase {
  int64_t B, T, Hq, Hkv, D;
  bool packed = false;
  DType in_dt = DType::BF16;    // q, k, v, dout
  DType grad_dt = DType::BF16;  // dq, dk, dv (and out)
  bool accumulate = false;      // gradients start from random values instead of zeros
};

std::string name_of(const TrainCase& c) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "B%lld T%lld H%lld/%lld D%lld %s%s in %s grad %s%s", (long long)c.B,
                (long long)c.T, (long long)c.Hq, (long long)c.Hkv, (long long)c.D,
                c.packed ? "packed" : "causal", "", dtype_name(c.in_dt), dtype_name(c.grad_dt),
                c.accumulate ? " (+=)" : "");
  return buf;
}

// Packed rows: runs of random lengths 1..T/3 with increasing ids.
std::vector<int32_t> random_seq_ids(Rng& rng, int64_t B, int64_t T) {
  std::vector<int32_t> ids(B * T);
  for (int64_t b = 0; b < B; b++) {
    int32_t id = 0;
    for (int64_t t = 0; t < T;) {
      int64_t len = rng.uniform_int(1, (int)std::max<int64_t>(1, T / 3));
      for (int64_t i = 0; i < len && t < T; i++, t++) ids[b * T + t] = id;
      id++;
    }
  }
  return ids;
}

struct Result {
  std::vector<double> out, lse, dq, dk, dv;
};

// Float64 attention forward and backward with bf16 rounding where PyTorch's eager bf16 path rounds.
Result bf16_math(const TrainCase& c, const std::vector<float>& q, const std::vector<float>& k,
                 const std::vector<float>& v, const std::vector<float>& dout,
                 const std::vector<int32_t>& ids) {
  const int64_t B = c.B, T = c.T, Hq = c.Hq, Hkv = c.Hkv, D = c.D, G = Hq / Hkv;
  const double scale = 1.0 / std::sqrt((double)D);
  Result r;
  r.out.assign(B * T * Hq * D, 0.0);
  r.lse.assign(B * T * Hq, 0.0);
  r.dq.assign(B * T * Hq * D, 0.0);
  r.dk.assign(B * T * Hkv * D, 0.0);
  r.dv.assign(B * T * Hkv * D, 0.0);
  std::vector<double> P(T * T), dkh(T * D), dvh(T * D), dqr(D);
  std::vector<int64_t> begin(T);
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t < T; t++)
      begin[t] = (!ids.empty() && t > 0 && ids[b * T + t] == ids[b * T + t - 1]) ? begin[t - 1] : t;
    if (ids.empty()) std::fill(begin.begin(), begin.end(), 0);
    for (int64_t h = 0; h < Hq; h++) {
      const int64_t hk = h / G;
      auto qr = [&](int64_t t) { return &q[((b * T + t) * Hq + h) * D]; };
      auto gr = [&](int64_t t) { return &dout[((b * T + t) * Hq + h) * D]; };
      auto kr = [&](int64_t s) { return &k[((b * T + s) * Hkv + hk) * D]; };
      auto vr = [&](int64_t s) { return &v[((b * T + s) * Hkv + hk) * D]; };
      for (int64_t t = 0; t < T; t++) {
        double* p = &P[t * T];
        double mx = -1e300;
        for (int64_t s = begin[t]; s <= t; s++) {
          double a = 0;
          for (int64_t d = 0; d < D; d++) a += (double)qr(t)[d] * kr(s)[d];
          p[s] = round_bf16d(a * scale);
          mx = std::max(mx, p[s]);
        }
        double sum = 0;
        for (int64_t s = begin[t]; s <= t; s++) sum += std::exp(p[s] - mx);
        r.lse[(b * T + t) * Hq + h] = mx + std::log(sum);
        double* o = &r.out[((b * T + t) * Hq + h) * D];
        for (int64_t s = begin[t]; s <= t; s++) {
          p[s] = round_bf16d(std::exp(p[s] - mx) / sum);
          for (int64_t d = 0; d < D; d++) o[d] += p[s] * vr(s)[d];
        }
        for (int64_t d = 0; d < D; d++) o[d] = round_bf16d(o[d]);
      }
      std::fill(dkh.begin(), dkh.end(), 0.0);
      std::fill(dvh.begin(), dvh.end(), 0.0);
      for (int64_t t = 0; t < T; t++) {
        const double* p = &P[t * T];
        std::vector<double> ds(t + 1, 0.0);
        double delta = 0;
        for (int64_t s = begin[t]; s <= t; s++) {
          double a = 0;
          for (int64_t d = 0; d < D; d++) a += (double)gr(t)[d] * vr(s)[d];
          ds[s] = round_bf16d(a);  // dP
          delta += p[s] * ds[s];
        }
        std::fill(dqr.begin(), dqr.end(), 0.0);
        for (int64_t s = begin[t]; s <= t; s++) {
          ds[s] = round_bf16d(p[s] * (ds[s] - delta));
          for (int64_t d = 0; d < D; d++) {
            dqr[d] += ds[s] * kr(s)[d];
            dkh[s * D + d] += ds[s] * qr(t)[d];
            dvh[s * D + d] += p[s] * gr(t)[d];
          }
        }
        for (int64_t d = 0; d < D; d++) r.dq[((b * T + t) * Hq + h) * D + d] = round_bf16d(dqr[d] * scale);
      }
      for (int64_t s = 0; s < T; s++)  // per-head bf16 gradients, summed over the group
        for (int64_t d = 0; d < D; d++) {
          r.dk[((b * T + s) * Hkv + hk) * D + d] += round_bf16d(dkh[s * D + d] * scale);
          r.dv[((b * T + s) * Hkv + hk) * D + d] += round_bf16d(dvh[s * D + d]);
        }
    }
  }
  for (auto& x : r.dk) x = round_bf16d(x);
  for (auto& x : r.dv) x = round_bf16d(x);
  return r;
}

std::vector<double> minus(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<double> d(a.size());
  for (size_t i = 0; i < a.size(); i++) d[i] = (double)a[i] - (double)b[i];
  return d;
}

void check_bf16(const std::string& what, double kernel_err, double bf16_err) {
  std::printf("  %-52s kernel %.3e  bf16-math %.3e  ratio %.2f\n", what.c_str(), kernel_err, bf16_err,
              kernel_err / std::max(bf16_err, 1e-300));
  EXPECT_LE(kernel_err, 2.0 * bf16_err + 1e-4) << what;
}

void check_case(const TrainCase& c) {
  Rng rng;
  const int64_t B = c.B, T = c.T, Hq = c.Hq, Hkv = c.Hkv, D = c.D;
  const Shape sq{B, T, Hq, D}, skv{B, T, Hkv, D}, sl{B, T, Hq};
  auto q = randn_bf16(rng, B * T * Hq * D), k = randn_bf16(rng, B * T * Hkv * D),
       v = randn_bf16(rng, B * T * Hkv * D), dout = randn_bf16(rng, B * T * Hq * D);
  std::vector<int32_t> ids = c.packed ? random_seq_ids(rng, B, T) : std::vector<int32_t>();
  Tensor ids_cpu = c.packed ? Tensor::from_i32(ids, {B, T}) : Tensor();
  Tensor ids_gpu = c.packed ? device_i32(ids, {B, T}) : Tensor();

  // CPU op, f32 on the same (bf16-valued) inputs: the reference.
  Tensor qc = Tensor::from_f32(q, sq), kc = Tensor::from_f32(k, skv), vc = Tensor::from_f32(v, skv);
  Tensor out_c = Tensor::empty(sq, DType::F32), lse_c = Tensor::empty(sl, DType::F32);
  attention_forward_train(out_c, lse_c, qc, kc, vc, c.packed ? &ids_cpu : nullptr);
  Tensor dq_c = Tensor::zeros(sq, DType::F32), dk_c = Tensor::zeros(skv, DType::F32),
         dv_c = Tensor::zeros(skv, DType::F32);
  attention_backward(dq_c, dk_c, dv_c, Tensor::from_f32(dout, sq), qc, kc, vc, out_c, lse_c,
                     c.packed ? &ids_cpu : nullptr);

  // CUDA, through the same dispatch.
  Tensor qd = to_device(q, sq, c.in_dt), kd = to_device(k, skv, c.in_dt), vd = to_device(v, skv, c.in_dt);
  Tensor out = poisoned(sq, c.grad_dt), lse = poisoned(sl, DType::F32);
  attention_forward_train(out, lse, qd, kd, vd, c.packed ? &ids_gpu : nullptr);
  std::vector<float> dq0(B * T * Hq * D, 0.0f), dk0(B * T * Hkv * D, 0.0f), dv0(B * T * Hkv * D, 0.0f);
  if (c.accumulate) {
    dq0 = randn_bf16(rng, dq0.size(), 0.1f);
    dk0 = randn_bf16(rng, dk0.size(), 0.1f);
    dv0 = randn_bf16(rng, dv0.size(), 0.1f);
  }
  Tensor dq = to_device(dq0, sq, c.grad_dt), dk = to_device(dk0, skv, c.grad_dt),
         dv = to_device(dv0, skv, c.grad_dt);
  attention_backward(dq, dk, dv, to_device(dout, sq, c.in_dt), qd, kd, vd, out, lse,
                     c.packed ? &ids_gpu : nullptr);

  const std::string name = name_of(c);
  std::vector<float> got_out = out.to_f32_vector(), got_lse = lse.to_f32_vector();
  std::vector<float> got_dq = dq.to_f32_vector(), got_dk = dk.to_f32_vector(), got_dv = dv.to_f32_vector();
  ASSERT_EQ(count_nonfinite(got_out) + count_nonfinite(got_lse), 0u) << name << ": unwritten outputs";
  ASSERT_EQ(count_nonfinite(got_dq) + count_nonfinite(got_dk) + count_nonfinite(got_dv), 0u) << name;
  auto ref_out = out_c.to_f32_vector(), ref_lse = lse_c.to_f32_vector();
  auto ref_dq = dq_c.to_f32_vector(), ref_dk = dk_c.to_f32_vector(), ref_dv = dv_c.to_f32_vector();
  double e_out = rel_err(got_out, ref_out), e_lse = rel_err(got_lse, ref_lse);
  double e_dq = rel_err(minus(got_dq, dq0), ref_dq), e_dk = rel_err(minus(got_dk, dk0), ref_dk),
         e_dv = rel_err(minus(got_dv, dv0), ref_dv);
  std::printf("%s\n", name.c_str());
  if (c.in_dt == DType::F32) {  // f32 inputs: f32 math on both sides
    const double tol = c.grad_dt == DType::F32 ? 2e-5 : 1e-2;
    expect_f32_close("out", e_out, c.grad_dt == DType::F32 ? 2e-5 : 1e-2);
    expect_f32_close("lse", e_lse, 2e-5);
    expect_f32_close("dq", e_dq, tol);
    expect_f32_close("dk", e_dk, tol);
    expect_f32_close("dv", e_dv, tol);
    return;
  }
  if (c.accumulate && c.grad_dt != DType::F32) {  // the sum is rounded to bf16: a sanity bound
    std::vector<double> want(ref_dq.size());
    for (size_t i = 0; i < want.size(); i++) want[i] = (double)dq0[i] + ref_dq[i];
    expect_f32_close("dq (dq0 + grad, bf16 sum)", rel_err(got_dq, want), 1e-2);
    for (size_t i = 0; i < ref_dk.size(); i++) ref_dk[i] += dk0[i];
    expect_f32_close("dk (dk0 + grad, bf16 sum)", rel_err(got_dk, ref_dk), 1e-2);
    return;
  }
  Result r = bf16_math(c, q, k, v, dout, ids);
  check_bf16("out", e_out, rel_err(r.out, ref_out));
  check_bf16("lse", e_lse, rel_err(r.lse, ref_lse));
  check_bf16("dq", e_dq, rel_err(r.dq, ref_dq));
  check_bf16("dk", e_dk, rel_err(r.dk, ref_dk));
  check_bf16("dv", e_dv, rel_err(r.dv, ref_dv));
}

// Both forward variants: 16 and 32 queries per warp.
TEST(CudaAttentionTrain, TensorCoresCausal) {
  QT_REQUIRE_GPU();
  for (int mt : {1, 2}) {
    std::printf("forward m-tiles per warp: %d\n", mt);
    cuda::set_train_forward_mtiles(mt);
    check_case({2, 37, 4, 4, 64});
    check_case({2, 300, 8, 2, 128});  // GQA 4:1, a partial last block
    check_case({1, 300, 4, 1, 32});
    check_case({1, 128, 4, 2, 96});
    check_case({2, 37, 8, 2, 128, false, DType::BF16, DType::F32});  // f32 out and gradients
  }
  cuda::set_train_forward_mtiles(0);  // back to the default
}

TEST(CudaAttentionTrain, TensorCoresPacked) {
  QT_REQUIRE_GPU();
  for (int mt : {1, 2}) {
    std::printf("forward m-tiles per warp: %d\n", mt);
    cuda::set_train_forward_mtiles(mt);
    check_case({2, 37, 8, 2, 32, true});
    check_case({2, 300, 8, 2, 128, true});
    check_case({2, 300, 4, 4, 64, true});
    check_case({1, 256, 8, 2, 64, true, DType::BF16, DType::F32});
  }
  cuda::set_train_forward_mtiles(0);
}

TEST(CudaAttentionTrain, SimpleKernels) {
  QT_REQUIRE_GPU();
  check_case({2, 37, 4, 2, 16});  // head dim 16: no tensor-core kernel
  check_case({2, 45, 8, 2, 48, true});
  check_case({2, 70, 8, 2, 64, true, DType::F32, DType::F32});
  check_case({1, 37, 4, 4, 128, false, DType::F32, DType::F32});
}

TEST(CudaAttentionTrain, GradientsAccumulate) {
  QT_REQUIRE_GPU();
  check_case({2, 100, 8, 2, 64, true, DType::BF16, DType::F32, true});
  check_case({1, 100, 4, 1, 128, false, DType::BF16, DType::BF16, true});
  check_case({1, 50, 4, 2, 16, true, DType::BF16, DType::F32, true});  // simple kernel
}

TEST(CudaAttentionTrain, BadArgumentsThrow) {
  QT_REQUIRE_GPU();
  Tensor q = Tensor::zeros({1, 8, 4, 64}, DType::BF16, Device::CUDA);
  Tensor k = Tensor::zeros({1, 8, 3, 64}, DType::BF16, Device::CUDA);
  Tensor out = Tensor::empty({1, 8, 4, 64}, DType::BF16, Device::CUDA);
  Tensor lse = Tensor::empty({1, 8, 4}, DType::F32, Device::CUDA);
  expect_error([&] { attention_forward_train(out, lse, q, k, k); }, ErrorKind::Shape,
               {"multiple of kv heads"});
  Tensor k2 = Tensor::zeros({1, 8, 2, 64}, DType::BF16, Device::CUDA);
  Tensor ids = Tensor::from_i32(std::vector<int32_t>(8, 0), {1, 8});  // on the CPU
  expect_error([&] { attention_forward_train(out, lse, q, k2, k2, &ids); }, ErrorKind::Shape, {"seq_ids"});
  Tensor lse_bf = Tensor::empty({1, 8, 4}, DType::BF16, Device::CUDA);
  expect_error([&] { attention_forward_train(out, lse_bf, q, k2, k2); }, ErrorKind::Unsupported, {"lse"});
}

// Llama-3-8B attention shape: forward and backward time on the device, and their agreement with the
// CPU op (loose bound; the bf16 rule is checked on the smaller cases above).
TEST(CudaAttentionTrain, Timing8B) {
  QT_REQUIRE_GPU();
  Rng rng;
  const int64_t B = 1, T = 2048, Hq = 32, Hkv = 8, D = 128;
  const Shape sq{B, T, Hq, D}, skv{B, T, Hkv, D}, sl{B, T, Hq};
  auto q = randn_bf16(rng, B * T * Hq * D), k = randn_bf16(rng, B * T * Hkv * D),
       v = randn_bf16(rng, B * T * Hkv * D), dout = randn_bf16(rng, B * T * Hq * D);
  Tensor qd = to_device(q, sq, DType::BF16), kd = to_device(k, skv, DType::BF16),
         vd = to_device(v, skv, DType::BF16), gd = to_device(dout, sq, DType::BF16);
  Tensor out = Tensor::empty(sq, DType::BF16, Device::CUDA),
         lse = Tensor::empty(sl, DType::F32, Device::CUDA);
  Tensor dq = Tensor::zeros(sq, DType::BF16, Device::CUDA),
         dk = Tensor::zeros(skv, DType::BF16, Device::CUDA),
         dv = Tensor::zeros(skv, DType::BF16, Device::CUDA);
  auto time_ms = [](auto fn) {
    for (int i = 0; i < 3; i++) fn();
    cuda::synchronize();
    const int iters = 20;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; i++) fn();
    cuda::synchronize();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
  };
  for (int mt : {1, 2}) {
    cuda::set_train_forward_mtiles(mt);
    double ms = time_ms([&] { attention_forward_train(out, lse, qd, kd, vd); });
    std::printf("  [timing] forward with %d m-tile(s) per warp: %.3f ms\n", mt, ms);
  }
  cuda::set_train_forward_mtiles(0);
  double fwd = time_ms([&] { attention_forward_train(out, lse, qd, kd, vd); });
  double bwd = time_ms([&] { attention_backward(dq, dk, dv, gd, qd, kd, vd, out, lse); });
  const double fwd_flops = 2.0 * 2.0 * T * T * Hq * D / 2.0 * B, bwd_flops = 2.5 * fwd_flops;
  std::printf(
      "  [timing] B1 T2048 Hq32 Hkv8 D128 bf16 causal: forward %.3f ms (%.1f TFLOP/s), backward %.3f ms "
      "(%.1f TFLOP/s), fwd+bwd %.3f ms\n",
      fwd, fwd_flops / fwd / 1e9, bwd, bwd_flops / bwd / 1e9, fwd + bwd);

  // One clean pass against the CPU op.
  attention_forward_train(out, lse, qd, kd, vd);
  dq = Tensor::zeros(sq, DType::F32, Device::CUDA);
  dk = Tensor::zeros(skv, DType::F32, Device::CUDA);
  dv = Tensor::zeros(skv, DType::F32, Device::CUDA);
  attention_backward(dq, dk, dv, gd, qd, kd, vd, out, lse);
  Tensor qc = Tensor::from_f32(q, sq), kc = Tensor::from_f32(k, skv), vc = Tensor::from_f32(v, skv);
  Tensor out_c = Tensor::empty(sq, DType::F32), lse_c = Tensor::empty(sl, DType::F32);
  auto c0 = std::chrono::steady_clock::now();
  attention_forward_train(out_c, lse_c, qc, kc, vc);
  Tensor dq_c = Tensor::zeros(sq, DType::F32), dk_c = Tensor::zeros(skv, DType::F32),
         dv_c = Tensor::zeros(skv, DType::F32);
  attention_backward(dq_c, dk_c, dv_c, Tensor::from_f32(dout, sq), qc, kc, vc, out_c, lse_c);
  double cpu_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - c0).count();
  double e[5] = {
      rel_err(out.to_f32_vector(), out_c.to_f32_vector()),
      rel_err(lse.to_f32_vector(), lse_c.to_f32_vector()), rel_err(dq.to_f32_vector(), dq_c.to_f32_vector()),
      rel_err(dk.to_f32_vector(), dk_c.to_f32_vector()), rel_err(dv.to_f32_vector(), dv_c.to_f32_vector())};
  std::printf(
      "  [8B shape vs CPU op, CPU fwd+bwd %.0f ms] rel err out %.3e lse %.3e dq %.3e dk %.3e dv %.3e\n",
      cpu_ms, e[0], e[1], e[2], e[3], e[4]);
  for (double x : e) EXPECT_LE(x, 2e-2);
}

}  // namespace
}  // namespace qtune
