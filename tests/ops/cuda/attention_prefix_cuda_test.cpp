// Training attention with prefix rows on CUDA (attention_forward_train_prefix / attention_backward_prefix,
// bf16): it runs the tested training kernels on the prefix-extended sequence, so its forward must equal,
// bit for bit, the real rows of those kernels run directly on the extended sequence built here (the
// backward: up to the order of its atomic adds); and all stay within bf16 error (1e-2 relative) of the CPU
// f32 op on the same bf16-valued inputs (which is itself tested against float64 in
// tests/ops/attention_prefix_test.cpp).
#include <gtest/gtest.h>

#include "cuda_test_util.h"
#include "ops/attention.h"

namespace qtune {
namespace {
using namespace cuda_test;

Tensor rand_bf16(Rng& rng, const Shape& s) {
  std::vector<float> v(shape_numel(s));
  for (float& x : v) x = round_bf16(rng.normal());
  return Tensor::from_f32(v, s);
}

Tensor on_gpu(const Tensor& f32) {
  return f32.to_dtype(DType::BF16).to(Device::CUDA);
}

// [B, P + T, ...] from head [B, P, ...] (or zeros) and body [B, T, ...], on the CPU in f32.
Tensor cat(const Tensor* head, const Tensor& body, int64_t P) {
  const int64_t B = body.size(0), T = body.size(1), row = body.numel() / (B * T);
  Shape s = body.shape();
  s[1] = P + T;
  Tensor out = Tensor::zeros(s, DType::F32);
  for (int64_t b = 0; b < B; b++) {
    if (head)
      std::copy(head->data<float>() + b * P * row, head->data<float>() + (b + 1) * P * row,
                out.data<float>() + b * (P + T) * row);
    std::copy(body.data<float>() + b * T * row, body.data<float>() + (b + 1) * T * row,
              out.data<float>() + (b * (P + T) + P) * row);
  }
  return out;
}

double rel(const std::vector<float>& a, const std::vector<float>& b) {
  double n = 0, d = 0;
  for (size_t i = 0; i < a.size(); i++) {
    n += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    d += (double)b[i] * b[i];
  }
  return std::sqrt(n / d);
}

// Rows [P, P + T) of x [B, P + T, ...] as a vector.
std::vector<float> real_rows(const Tensor& x, int64_t P) {
  std::vector<float> v = x.to_f32_vector(), out;
  const int64_t B = x.size(0), T2 = x.size(1), row = x.numel() / (B * T2);
  for (int64_t b = 0; b < B; b++)
    out.insert(out.end(), v.begin() + (b * T2 + P) * row, v.begin() + (b + 1) * T2 * row);
  return out;
}

}  // namespace

TEST(AttentionPrefixCuda, EqualsTheKernelsOnTheExtendedSequence) {
  QT_REQUIRE_GPU();
  Rng rng;
  const int64_t B = 2, T = 77, Hq = 8, Hkv = 2, D = 64, P = 5;
  Tensor q = rand_bf16(rng, {B, T, Hq, D}), k = rand_bf16(rng, {B, T, Hkv, D}),
         v = rand_bf16(rng, {B, T, Hkv, D});
  Tensor pk = rand_bf16(rng, {B, P, Hkv, D}), pv = rand_bf16(rng, {B, P, Hkv, D});
  Tensor dout = rand_bf16(rng, {B, T, Hq, D});
  // The prefix op on the GPU.
  Tensor gq = on_gpu(q), gk = on_gpu(k), gv = on_gpu(v), gdo = on_gpu(dout);
  Tensor out = Tensor::empty(gq.shape(), DType::BF16, Device::CUDA);
  Tensor lse = Tensor::empty({B, T, Hq}, DType::F32, Device::CUDA);
  Tensor dpk = Tensor::zeros(pk.shape(), DType::F32, Device::CUDA),
         dpv = Tensor::zeros(pv.shape(), DType::F32, Device::CUDA);
  AttentionPrefix pre{on_gpu(pk), on_gpu(pv), &dpk, &dpv};
  attention_forward_train_prefix(out, lse, gq, gk, gv, pre);
  Tensor dq = Tensor::zeros(gq.shape(), DType::BF16, Device::CUDA),
         dk = Tensor::zeros(gk.shape(), DType::BF16, Device::CUDA),
         dv = Tensor::zeros(gv.shape(), DType::BF16, Device::CUDA);
  attention_backward_prefix(dq, dk, dv, gdo, gq, gk, gv, out, lse, pre);
  // The plain kernels on the extended sequence.
  Tensor q2 = on_gpu(cat(nullptr, q, P)), k2 = on_gpu(cat(&pk, k, P)), v2 = on_gpu(cat(&pv, v, P));
  Tensor do2 = on_gpu(cat(nullptr, dout, P));
  Tensor out2 = Tensor::empty(q2.shape(), DType::BF16, Device::CUDA);
  Tensor lse2 = Tensor::empty({B, P + T, Hq}, DType::F32, Device::CUDA);
  attention_forward_train(out2, lse2, q2, k2, v2);
  Tensor dq2 = Tensor::zeros(q2.shape(), DType::BF16, Device::CUDA),
         dk2 = Tensor::zeros(k2.shape(), DType::BF16, Device::CUDA),
         dv2 = Tensor::zeros(v2.shape(), DType::BF16, Device::CUDA);
  attention_backward(dq2, dk2, dv2, do2, q2, k2, v2, out2, lse2);
  EXPECT_EQ(out.to_f32_vector(), real_rows(out2, P));
  EXPECT_EQ(lse.to_f32_vector(), real_rows(lse2, P));
  // The backward kernels add by atomics (in no fixed order): equal up to that.
  EXPECT_LT(rel(dq.to_f32_vector(), real_rows(dq2, P)), 2e-3);
  EXPECT_LT(rel(dk.to_f32_vector(), real_rows(dk2, P)), 2e-3);
  EXPECT_LT(rel(dv.to_f32_vector(), real_rows(dv2, P)), 2e-3);
  // And the CPU f32 op on the same values.
  Tensor cout = Tensor::empty(q.shape(), DType::F32), clse = Tensor::empty({B, T, Hq}, DType::F32);
  Tensor cdpk = Tensor::zeros(pk.shape(), DType::F32), cdpv = Tensor::zeros(pv.shape(), DType::F32);
  AttentionPrefix cpre{pk, pv, &cdpk, &cdpv};
  attention_forward_train_prefix(cout, clse, q, k, v, cpre);
  Tensor cdq = Tensor::zeros(q.shape(), DType::F32), cdk = Tensor::zeros(k.shape(), DType::F32),
         cdv = Tensor::zeros(v.shape(), DType::F32);
  attention_backward_prefix(cdq, cdk, cdv, dout, q, k, v, cout, clse, cpre);
  const std::pair<const char*, std::pair<Tensor*, Tensor*>> pairs[] = {
      {"out", {&out, &cout}}, {"dq", {&dq, &cdq}},          {"dk", {&dk, &cdk}},
      {"dv", {&dv, &cdv}},    {"dprefix_k", {&dpk, &cdpk}}, {"dprefix_v", {&dpv, &cdpv}}};
  for (const auto& [name, t] : pairs) {
    double e = rel(t.first->to_f32_vector(), t.second->to_f32_vector());
    std::printf("prefix attention %s: CUDA bf16 vs CPU f32 rel err %.2e\n", name, e);
    EXPECT_LT(e, 1e-2) << name;
  }
}

}  // namespace qtune
