// LoraLayer: the LoRA / DoRA forward term and PEFT's initialisation (see lora_layer.h).
#include "peft/lora_layer.h"

#include <cmath>
#include <random>

#include "core/error.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "peft/dora_ops.h"

namespace qtune {

void LoraLayer::refresh(const Linear& base, Device device, DType act_dtype) {
  QT_CHECK(A.defined() && B.defined() && A.dtype() == DType::F32 && B.dtype() == DType::F32);
  Tensor b_scaled = B.clone();  // [O, r]
  float* bs = b_scaled.data<float>();
  for (int64_t i = 0; i < b_scaled.numel(); ++i) bs[i] = (float)(bs[i] * scale);
  // The LoRA product stays in f32 on every device, as PEFT keeps adapter weights in f32 and casts x to
  // them (autocast_adapter_dtype) even when the base model runs in bf16.
  (void)act_dtype;
  a_dev_ = A.to(device);
  b_dev_ = b_scaled.to(device);
  dora_scale_ = Tensor();
  base_bias_ = Tensor();
  if (!magnitude.defined()) return;
  const int64_t O = B.size(0);
  Tensor norm = Tensor::empty({O}, DType::F32, device);
  dora_weight_norm(norm, dora_dense_weight(base), a_dev_, b_dev_, 1.0f);  // b_dev_ holds scale·B
  dora_scale_ = Tensor::empty({O}, DType::F32, device);
  dora_scale(dora_scale_, magnitude.to(device), norm);
  if (base.bias.defined()) {
    base_bias_ = Tensor::empty({O}, DType::F32, device);
    convert(base_bias_, base.bias);
  }
}

void LoraLayer::apply(Tensor& out, const Tensor& x) const {
  QT_CHECK(a_dev_.defined(), "LoRA layer ", module, " used before refresh()");
  Tensor x32 = x;  // [N, I] F32
  if (x.dtype() != DType::F32) {
    x32 = Tensor::empty(x.shape(), DType::F32, x.device());
    convert(x32, x);
  }
  Shape mid_shape = x.shape();
  mid_shape.back() = r;
  Tensor mid = Tensor::empty(mid_shape, DType::F32, x.device());  // [N, r]
  linear_forward(mid, x32, a_dev_);
  Tensor delta = Tensor::empty(out.shape(), DType::F32, out.device());  // [N, O] = scale·(x·Aᵀ)·Bᵀ
  linear_forward(delta, mid, b_dev_);
  if (dora_scale_.defined())  // DoRA: out = b + d ⊙ (out − b + delta)
    return dora_combine(out, out, delta, dora_scale_, base_bias_.defined() ? &base_bias_ : nullptr);
  if (out.dtype() != DType::F32) {
    Tensor d = Tensor::empty(out.shape(), out.dtype(), out.device());
    convert(d, delta);
    delta = d;
  }
  add_inplace(out, delta);
}

void init_lora_weights(LoraLayer& l, int64_t in_features, int64_t out_features, const std::string& init,
                       uint64_t seed) {
  std::mt19937_64 rng(seed);
  l.A = Tensor::zeros({l.r, in_features}, DType::F32);
  l.B = Tensor::zeros({out_features, l.r}, DType::F32);
  float* a = l.A.data<float>();
  if (init == "gaussian") {
    std::normal_distribution<double> nd(0.0, 1.0 / (double)l.r);
    for (int64_t i = 0; i < l.A.numel(); ++i) a[i] = (float)nd(rng);
    return;
  }
  // kaiming_uniform_(a=√5): gain = √(2/(1+5)), std = gain/√fan_in, bound = √3·std = 1/√fan_in.
  auto kaiming = [&](float* p, int64_t n, int64_t fan_in) {
    const double gain = std::sqrt(2.0 / (1.0 + 5.0));
    const double bound = std::sqrt(3.0) * gain / std::sqrt((double)fan_in);
    std::uniform_real_distribution<double> ud(-bound, bound);
    for (int64_t i = 0; i < n; ++i) p[i] = (float)ud(rng);
  };
  kaiming(a, l.A.numel(), in_features);
  if (init == "false") kaiming(l.B.data<float>(), l.B.numel(), l.r);
}

Tensor dora_initial_magnitude(const Linear& base) {
  Tensor w = dora_dense_weight(base).to(Device::CPU).to_dtype(DType::F32);  // [O, I]
  const int64_t O = w.size(0), I = w.size(1);
  Tensor m = Tensor::empty({O}, DType::F32);
  for (int64_t o = 0; o < O; ++o) {
    double sq = 0;
    for (int64_t i = 0; i < I; ++i) sq += (double)w.data<float>()[o * I + i] * w.data<float>()[o * I + i];
    m.data<float>()[o] = (float)std::sqrt(sq);
  }
  return m;
}

}  // namespace qtune
