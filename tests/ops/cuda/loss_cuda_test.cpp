// The chunked LM-head cross-entropy on the GPU against the CPU op (tests/ops/loss_backward_test.cpp checks
// that one against f64), bf16 hidden states and head as in training: the summed loss, the target count,
// d(hidden) and d(head), over several chunks with ignored labels (-100) and one all-ignored chunk. The GPU
// keeps the logits in bf16, as transformers' LM head does before its loss upcasts; the CPU op runs in f32 on
// the same bf16-rounded inputs, so the tolerances are bf16's.
#include <gtest/gtest.h>

#include <cmath>

#include "cuda_test_util.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/loss.h"

namespace qtune {
namespace {
using namespace cuda_test;

TEST(CudaLoss, ChunkedCrossEntropyMatchesCpu) {
  QT_REQUIRE_GPU();
  Rng rng;
  const int64_t N = 70, C = 64, V = 1000, chunk = 16;
  auto h = randn_bf16(rng, N * C), w = randn_bf16(rng, V * C, 0.2f);
  std::vector<int32_t> y(N);
  for (int64_t i = 0; i < N; i++)
    y[i] = (i % 7 == 3 || (i >= 16 && i < 32)) ? -100 : (int32_t)((i * 7919) % V);
  const float scale = 1.0f / 40.0f;
  // CPU reference on the same (bf16-valued) inputs, in f32.
  Tensor ch = Tensor::from_f32(h, {N, C}), cw = Tensor::from_f32(w, {V, C});
  Tensor cdh = Tensor::zeros({N, C}, DType::F32), cdw = Tensor::zeros({V, C}, DType::F32);
  LossSum want = cross_entropy_forward_backward(ch, cw, Tensor::from_i32(y, {N}), &cdh, &cdw, scale, chunk);
  Tensor gh = to_device(h, {N, C}, DType::BF16), gw = to_device(w, {V, C}, DType::BF16);
  Tensor gdh = Tensor::zeros({N, C}, DType::F32, Device::CUDA),
         gdw = Tensor::zeros({V, C}, DType::F32, Device::CUDA);
  LossSum got = cuda::cross_entropy_forward_backward(gh, gw, device_i32(y, {N}), &gdh, &gdw, scale, chunk);
  EXPECT_EQ(got.count, want.count);
  const double le = std::fabs(got.loss - want.loss) / want.loss;
  const double he = rel_err(gdh.to_f32_vector(), cdh.to_f32_vector());
  const double we = rel_err(gdw.to_f32_vector(), cdw.to_f32_vector());
  std::printf("  cross-entropy N=%lld V=%lld chunk %lld: loss rel err %.2e, dh %.2e, dW %.2e\n", (long long)N,
              (long long)V, (long long)chunk, le, he, we);
  EXPECT_LT(le, 2e-3);
  EXPECT_LT(he, 2e-2);
  EXPECT_LT(we, 2e-2);
  // Loss only: the same sum.
  LossSum only =
      cuda::cross_entropy_forward_backward(gh, gw, device_i32(y, {N}), nullptr, nullptr, 1.0f, chunk);
  EXPECT_NEAR(only.loss, got.loss, 1e-6 * got.loss);
}

}  // namespace
}  // namespace qtune
