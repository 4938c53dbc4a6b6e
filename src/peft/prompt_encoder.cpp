// PromptEncoder (see prompt_encoder.h): init, forward, backward of PEFT's P-tuning MLP and prefix projection.
#include "peft/prompt_encoder.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"
#include "ops/matmul.h"

namespace qtune {

namespace {

const std::string kPre = "prompt_encoder.default.";

Tensor normal(const Shape& s, std::mt19937_64& rng) {
  Tensor t = Tensor::empty(s, DType::F32);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (int64_t i = 0; i < t.numel(); i++) t.data<float>()[i] = (float)nd(rng);
  return t;
}

// torch.nn.Linear's init: weight and bias U(−1/√fan_in, 1/√fan_in).
void add_linear(std::vector<PromptEncoder::Param>& ps, const std::string& name, int64_t out, int64_t in,
                bool zero, std::mt19937_64& rng) {
  const double bound = 1.0 / std::sqrt((double)in);
  std::uniform_real_distribution<double> ud(-bound, bound);
  Tensor w = Tensor::zeros({out, in}, DType::F32), b = Tensor::zeros({out}, DType::F32);
  if (!zero) {
    for (int64_t i = 0; i < w.numel(); i++) w.data<float>()[i] = (float)ud(rng);
    for (int64_t i = 0; i < b.numel(); i++) b.data<float>()[i] = (float)ud(rng);
  }
  ps.push_back({kPre + name + ".weight", w});
  ps.push_back({kPre + name + ".bias", b});
}

void add_to(Tensor& dst, const Tensor& src) {
  for (int64_t i = 0; i < dst.numel(); i++) dst.data<float>()[i] += src.data<float>()[i];
}

void relu(Tensor& x) {
  for (int64_t i = 0; i < x.numel(); i++) x.data<float>()[i] = std::max(x.data<float>()[i], 0.0f);
}

}  // namespace

PromptEncoder PromptEncoder::p_tuning(int64_t P, int64_t C, int64_t H, uint64_t seed) {
  if (P <= 0 || C <= 0 || H <= 0)
    throw_error(ErrorKind::Config, "P-tuning encoder: virtual tokens (", P, "), token_dim (", C,
                ") and encoder_hidden_size (", H, ") must be > 0");
  PromptEncoder e;
  e.kind_ = Kind::PTuningMlp;
  std::mt19937_64 rng(seed);
  e.params_.push_back({kPre + "embedding.weight", normal({P, C}, rng)});
  add_linear(e.params_, "mlp_head.0", H, C, false, rng);
  add_linear(e.params_, "mlp_head.2", H, H, false, rng);
  add_linear(e.params_, "mlp_head.4", C, H, false, rng);
  return e;
}

PromptEncoder PromptEncoder::prefix_projection(int64_t P, int64_t C, int64_t H, int64_t O, bool zero_init,
                                               uint64_t seed) {
  if (P <= 0 || C <= 0 || H <= 0 || O <= 0)
    throw_error(ErrorKind::Config, "prefix projection: virtual tokens (", P, "), token_dim (", C,
                "), encoder_hidden_size (", H, ") must be > 0");
  PromptEncoder e;
  e.kind_ = Kind::PrefixProjection;
  std::mt19937_64 rng(seed);
  e.params_.push_back({kPre + "embedding.weight", normal({P, C}, rng)});
  add_linear(e.params_, "transform.0", H, C, false, rng);
  add_linear(e.params_, "transform.2", O, H, zero_init, rng);
  return e;
}

Tensor PromptEncoder::forward() const {
  const Tensor& E = params_[0].value;  // [P, C]
  const int64_t P = E.size(0);
  auto lin = [&](const Tensor& x, size_t w) {  // x·Wᵀ + b
    Tensor y = Tensor::empty({P, params_[w].value.size(0)}, DType::F32);
    linear_forward(y, x, params_[w].value, &params_[w + 1].value);
    return y;
  };
  if (kind_ == Kind::PTuningMlp) {
    Tensor h1 = lin(E, 1);  // [P, H]
    relu(h1);
    Tensor h2 = lin(h1, 3);  // [P, H]
    relu(h2);
    return lin(h2, 5);  // [P, C]
  }
  Tensor h = lin(E, 1);  // [P, H]
  for (int64_t i = 0; i < h.numel(); i++) h.data<float>()[i] = std::tanh(h.data<float>()[i]);
  return lin(h, 3);  // [P, L·2·C]
}

void PromptEncoder::backward(const Tensor& d_out, std::vector<Tensor*>& g) const {
  QT_CHECK(g.size() == params_.size(), "PromptEncoder::backward: ", g.size(), " gradients for ",
           params_.size(), " parameters");
  const Tensor& E = params_[0].value;
  const int64_t P = E.size(0);
  auto lin = [&](const Tensor& x, size_t w) {
    Tensor y = Tensor::empty({P, params_[w].value.size(0)}, DType::F32);
    linear_forward(y, x, params_[w].value, &params_[w + 1].value);
    return y;
  };
  // dy through y = x·Wᵀ + b: dW, db (when wanted) and dx (returned).
  auto lin_back = [&](const Tensor& dy, const Tensor& x, size_t w) {
    Tensor dx = Tensor::zeros(x.shape(), DType::F32);
    linear_backward(&dx, g[w], g[w + 1], dy, x, params_[w].value);
    return dx;
  };
  if (kind_ == Kind::PTuningMlp) {
    Tensor a1 = lin(E, 1);
    relu(a1);
    Tensor a2 = lin(a1, 3);
    relu(a2);
    Tensor d2 = lin_back(d_out, a2, 5);  // d(relu output 2)
    for (int64_t i = 0; i < d2.numel(); i++)
      if (a2.data<float>()[i] <= 0) d2.data<float>()[i] = 0;
    Tensor d1 = lin_back(d2, a1, 3);
    for (int64_t i = 0; i < d1.numel(); i++)
      if (a1.data<float>()[i] <= 0) d1.data<float>()[i] = 0;
    Tensor dE = lin_back(d1, E, 1);
    if (g[0]) add_to(*g[0], dE);
    return;
  }
  Tensor h = lin(E, 1);
  for (int64_t i = 0; i < h.numel(); i++) h.data<float>()[i] = std::tanh(h.data<float>()[i]);
  Tensor dh = lin_back(d_out, h, 3);
  for (int64_t i = 0; i < dh.numel(); i++) {
    const float t = h.data<float>()[i];
    dh.data<float>()[i] *= 1.0f - t * t;
  }
  Tensor dE = lin_back(dh, E, 1);
  if (g[0]) add_to(*g[0], dE);
}

}  // namespace qtune
