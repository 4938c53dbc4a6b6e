// Training-mode LoRA adapter (see lora_train.h): forward with dropout, backward into A and B.
#include "train/lora_train.h"

#include <cblas.h>

#include <cmath>
#include <cstring>
#include <map>

#include "core/error.h"
#include "core/profile.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "train/linear_backward.h"
#ifdef QTUNE_HAVE_CUDA
#include "train/cuda/lora_dropout.h"
#endif

namespace qtune {
namespace {

// splitmix64: the dropout mask bit of one element, reproducible from its coordinates.
inline uint64_t mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

struct TrainLoraAdapter : LinearAdapter, TrainableAdapter {
  std::shared_ptr<LoraLayer> layer;
  std::shared_ptr<const LoraTraining::State> state;
  uint64_t layer_id = 0;
  std::string key_a, key_b, key_m;
  const Linear* base = nullptr;  // the Linear this adapter sits on (DoRA's backward reads its weight)
  // On a GPU model: the trainable masters A F32 [r, I] and B F32 [O, r] live on the device (registered in
  // TrainableParams, updated there by the optimizer); layer->A/B are refreshed from them by sync_to_host.
  // a_bf, b_bf: their BF16 copies that the GEMMs read (refresh_gpu after each update).
  Tensor a_dev, b_dev, a_bf, b_bf;

  bool dropping() const { return state->training && state->dropout > 0; }
  bool on_gpu() const { return a_dev.defined(); }
  uint64_t mask_base() const { return mix(state->seed ^ mix(state->counter * 1000003ull + layer_id)); }
  uint64_t mask_threshold() const { return (uint64_t)(state->dropout * 18446744073709551616.0); }

  // GPU: x as BF16 [N, I], through the dropout mask when training with dropout.
  Tensor gemm_input(const Tensor& x) const {
    const int64_t I = x.size(-1), N = x.numel() / I;
    if (!dropping() && x.dtype() == DType::BF16) return x.reshape({N, I});
    Tensor out = Tensor::empty({N, I}, DType::BF16, x.device());
    if (!dropping()) {
      convert(out, x.reshape({N, I}));
      return out;
    }
#ifdef QTUNE_HAVE_CUDA
    lora_dropout_cuda(out, x, mask_base(), mask_threshold(), (float)(1.0 / (1.0 - state->dropout)));
#endif
    return out;
  }

  // GPU forward: out[N, O] += scale·(xd·Aᵀ)·Bᵀ with BF16 copies of A and B (f32 accumulation, one rounding
  // of the sum into out by the second GEMM's beta = 1).
  void apply_gpu(Tensor& out, const Tensor& x) const {
    QT_PROFILE("lora.fwd (in linear)");
    const int64_t O = out.size(-1), N = out.numel() / O;
    Tensor xd = gemm_input(x);                                           // [N, I]
    Tensor mid = Tensor::empty({N, layer->r}, DType::BF16, x.device());  // [N, r]
    matmul(mid, xd, a_bf, false, true);
    Tensor o2 = out.reshape({N, O});
    matmul(o2, mid, b_bf, false, true, (float)layer->scale, 1.0f);
  }

  // GPU backward, the CPU formulas below with BF16 GEMM inputs and F32 gradients; through the dropout mask
  // dx gets dropout(dh·A) (the same mask and 1/(1-p) scale as the forward's input).
  void backward_gpu(Tensor* dx, const Tensor& dy, const Tensor& x, TrainableParams* params) const {
    QT_PROFILE("lora.bwd (in linear)");
    const int64_t I = x.size(-1), N = x.numel() / I, O = dy.size(-1), r = layer->r;
    const float s = (float)layer->scale;
    const Device dev = x.device();
    Tensor xd = gemm_input(x);  // [N, I]
    Tensor dy2 = dy.reshape({N, O});
    Tensor h = Tensor::empty({N, r}, DType::BF16, dev), dh = Tensor::empty({N, r}, DType::BF16, dev);
    matmul(h, xd, a_bf, false, true);        // h = xd·Aᵀ
    matmul(dh, dy2, b_bf, false, false, s);  // dh = s·dy·B
    if (params) {
      if (Tensor* gb = params->grad(key_b)) matmul(*gb, dy2, h, true, false, s, 1.0f);  // dB += s·dyᵀ·h
      if (Tensor* ga = params->grad(key_a)) matmul(*ga, dh, xd, true, false, 1.0f, 1.0f);  // dA += dhᵀ·xd
    }
    if (!dx) return;
    Tensor dx2 = dx->reshape({N, I});
    if (!dropping()) {
      matmul(dx2, dh, a_bf, false, false, 1.0f, 1.0f);  // dx += dh·A
      return;
    }
    Tensor t = Tensor::empty({N, I}, DType::BF16, dev);
    matmul(t, dh, a_bf, false, false);
#ifdef QTUNE_HAVE_CUDA
    lora_dropout_cuda(t, t, mask_base(), mask_threshold(), (float)(1.0 / (1.0 - state->dropout)));
#endif
    add_inplace(dx2, t);
  }

  // GPU: the BF16 GEMM copies of the f32 masters (after each optimizer step).
  void refresh_gpu() {
    if (!a_bf.defined()) {
      a_bf = Tensor::empty(a_dev.shape(), DType::BF16, a_dev.device());
      b_bf = Tensor::empty(b_dev.shape(), DType::BF16, b_dev.device());
    }
    convert(a_bf, a_dev);
    convert(b_bf, b_dev);
  }

  // x with dropout applied (scaled by 1/(1-p)), [N, I].
  Tensor dropped(const Tensor& x) const {
    Tensor d = Tensor::empty(x.shape(), DType::F32);
    const float* src = x.data<float>();
    float* dst = d.data<float>();
    const double p = state->dropout;
    const float keep = (float)(1.0 / (1.0 - p));
    const uint64_t base = mask_base();
    const uint64_t threshold = mask_threshold();
    const int64_t n = x.numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) dst[i] = mix(base + (uint64_t)i) < threshold ? 0.0f : src[i] * keep;
    return d;
  }

  void apply(Tensor& out, const Tensor& x) const override {
    if (on_gpu()) return apply_gpu(out, x);
    if (!dropping()) {
      layer->apply(out, x);
      return;
    }
    layer->apply(out, dropped(x));
  }

  void backward(Tensor* dx, const Tensor& dy, const Tensor& x, TrainableParams* params) const override {
    if (on_gpu()) return backward_gpu(dx, dy, x, params);
    if (layer->magnitude.defined()) return dora_backward(dx, dy, x, params);
    const int64_t N = x.numel() / x.size(-1), I = x.size(-1), O = dy.size(-1), r = layer->r;
    const float s = (float)layer->scale;
    Tensor xd = dropping() ? dropped(x) : x;  // [N, I]
    const float* A = layer->A.data<float>();  // [r, I]
    const float* B = layer->B.data<float>();  // [O, r]
    // h = xd·Aᵀ [N, r]; dh = s·dy·B [N, r]
    std::vector<float> h(N * r), dh(N * r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, r, I, 1.0f, xd.data<float>(), I, A, I, 0.0f,
                h.data(), r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, r, O, s, dy.data<float>(), O, B, r, 0.0f,
                dh.data(), r);
    if (params) {
      if (Tensor* gb = params->grad(key_b))  // dB[O, r] += s·dyᵀ·h
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, r, N, s, dy.data<float>(), O, h.data(), r,
                    1.0f, gb->data<float>(), r);
      if (Tensor* ga = params->grad(key_a))  // dA[r, I] += dhᵀ·xd
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, I, N, 1.0f, dh.data(), r, xd.data<float>(), I,
                    1.0f, ga->data<float>(), I);
    }
    if (dx) {
      if (!dropping()) {  // dx[N, I] += dh·A
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, I, r, 1.0f, dh.data(), r, A, I, 1.0f,
                    dx->data<float>(), I);
      } else {  // through the mask: dx += (dh·A) ⊙ mask/(1-p); the mask is dropped(ones)
        Tensor t = Tensor::zeros({N, I}, DType::F32);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, I, r, 1.0f, dh.data(), r, A, I, 0.0f,
                    t.data<float>(), I);
        Tensor ones = Tensor::empty({N, I}, DType::F32);
        std::fill(ones.data<float>(), ones.data<float>() + N * I, 1.0f);
        Tensor m = dropped(ones);
        float* d = dx->data<float>();
        const float *tp = t.data<float>(), *mp = m.data<float>();
        for (int64_t i = 0; i < N * I; ++i) d[i] += tp[i] * mp[i];
      }
    }
  }

  // DoRA (PEFT's DoraLinearLayer, weight norm detached): out = b + d ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ) with
  // d = m / ‖W + s·B·A‖_row. With g = d ⊙ dy:  dm = Σ_n dy ⊙ (x·Wᵀ + s·x·Aᵀ·Bᵀ) / ‖·‖,
  // dB = s·gᵀ·h, dA = (s·g·B)ᵀ·x (h = x·Aᵀ), dx += s·g·B·A + ((d − 1) ⊙ dy)·W (linear_backward already
  // added dy·W for the base weight).
  void dora_backward(Tensor* dx, const Tensor& dy, const Tensor& x, TrainableParams* params) const {
    const int64_t N = x.numel() / x.size(-1), I = x.size(-1), O = dy.size(-1), r = layer->r;
    const float s = (float)layer->scale;
    const float* A = layer->A.data<float>();  // [r, I]
    const float* B = layer->B.data<float>();  // [O, r]
    std::vector<float> W((size_t)O * I);      // [O, I] dense f32 base weight
    if (base->quantized())
      dequant_weight_rows(*base, 0, O, W.data());
    else
      std::memcpy(W.data(), base->weight.data<float>(), W.size() * sizeof(float));
    std::vector<float> delta((size_t)O * I);  // s·B·A [O, I]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, O, I, r, s, B, r, A, I, 0.0f, delta.data(), I);
    std::vector<float> norm(O), d(O);
    const float* m = layer->magnitude.data<float>();
    for (int64_t o = 0; o < O; ++o) {
      double sq = 0;
      for (int64_t i = 0; i < I; ++i) {
        const float v = W[o * I + i] + delta[o * I + i];
        sq += (double)v * v;
      }
      norm[o] = (float)std::sqrt(sq);
      d[o] = (float)(m[o] / std::sqrt(sq));
    }
    std::vector<float> h(N * r), y((size_t)N * O), g((size_t)N * O), dh(N * r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, r, I, 1.0f, x.data<float>(), I, A, I, 0.0f,
                h.data(), r);
    // y = x·Wᵀ + s·h·Bᵀ  [N, O]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, O, I, 1.0f, x.data<float>(), I, W.data(), I, 0.0f,
                y.data(), O);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, O, r, s, h.data(), r, B, r, 1.0f, y.data(), O);
    const float* dyp = dy.data<float>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < O; ++o) g[n * O + o] = d[o] * dyp[n * O + o];
    if (params)
      if (Tensor* gm = params->grad(key_m)) {
        float* gmp = gm->data<float>();
        for (int64_t o = 0; o < O; ++o) {
          double acc = 0;
          for (int64_t n = 0; n < N; ++n) acc += (double)dyp[n * O + o] * y[n * O + o];
          gmp[o] += (float)(acc / norm[o]);
        }
      }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, r, O, s, g.data(), O, B, r, 0.0f, dh.data(), r);
    if (params) {
      if (Tensor* gb = params->grad(key_b))
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, r, N, s, g.data(), O, h.data(), r, 1.0f,
                    gb->data<float>(), r);
      if (Tensor* ga = params->grad(key_a))
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, I, N, 1.0f, dh.data(), r, x.data<float>(), I,
                    1.0f, ga->data<float>(), I);
    }
    if (dx) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, I, r, 1.0f, dh.data(), r, A, I, 1.0f,
                  dx->data<float>(), I);
      for (int64_t n = 0; n < N; ++n)  // reuse g as (d − 1) ⊙ dy
        for (int64_t o = 0; o < O; ++o) g[n * O + o] = (d[o] - 1.0f) * dyp[n * O + o];
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, I, O, 1.0f, g.data(), O, W.data(), I, 1.0f,
                  dx->data<float>(), I);
    }
  }
};


LoraTraining::LoraTraining(LlamaModel& model, LoraModel& lora, TrainableParams& params, uint64_t seed,
                           double dropout)
    : model_(model), lora_(lora), state_(std::make_shared<State>()) {
  state_->seed = seed;
  state_->dropout = dropout;
  std::map<std::string, Linear*> by_name;
  for (auto& [name, lin] : linear_modules(model)) by_name[name] = lin;
  const std::string prefix = "base_model.model.";
  uint64_t id = 0;
  for (const auto& l : lora.layers()) {
    if (l->magnitude.defined() && dropout > 0)
      throw_error(ErrorKind::Unsupported,
                  "DoRA training with lora_dropout > 0 is not implemented yet (module ", l->module,
                  "); use --lora-dropout 0");
    auto it = by_name.find(l->module);
    if (it == by_name.end())
      throw_error(ErrorKind::Internal, "LoRA module ", l->module, " is not in the model");
    if (l->magnitude.defined() && model.device() != Device::CPU)
      throw_error(ErrorKind::Unsupported, "DoRA training runs on the CPU only so far (module ", l->module, ")");
    auto a = std::make_shared<TrainLoraAdapter>();
    a->layer = l;
    a->state = state_;
    a->layer_id = id++;
    a->key_a = prefix + l->module + ".lora_A.weight";
    a->key_b = prefix + l->module + ".lora_B.weight";
    a->key_m = prefix + l->module + ".lora_magnitude_vector";
    a->base = it->second;
    if (model.device() != Device::CPU) {
      a->a_dev = l->A.clone().to(model.device());
      a->b_dev = l->B.clone().to(model.device());
      a->refresh_gpu();
    }
    slots_.push_back({it->second, it->second->adapter, a, a});
    it->second->adapter = a;
  }
  size_t registered = 0;
  for (const Slot& sl : slots_) {
    const LoraLayer& l = *sl.lora->layer;
    registered += l.magnitude.defined() ? 3 : 2;
    params.add(sl.lora->key_a, sl.lora->on_gpu() ? sl.lora->a_dev : l.A);
    params.add(sl.lora->key_b, sl.lora->on_gpu() ? sl.lora->b_dev : l.B);
    if (l.magnitude.defined()) params.add(sl.lora->key_m, l.magnitude);
  }
  if (lora.trainable().size() != registered)
    throw_error(ErrorKind::Unsupported,
                "training LoRA biases or modules_to_save is not implemented yet (bias must be \"none\")");
}

LoraTraining::~LoraTraining() {
  try {
    sync_to_host();
  } catch (...) {  // a failing GPU must not turn unwinding into std::terminate
  }
  for (Slot& s : slots_) s.linear->adapter = s.original;
}

void LoraTraining::refresh() {
  if (model_.device() != Device::CPU) {  // the GPU forward reads BF16 copies of the device masters
    for (Slot& s : slots_) s.lora->refresh_gpu();
    return;
  }
  lora_.refresh();
  for (Slot& s : slots_) s.linear->adapter = s.training;
}

void LoraTraining::sync_to_host() {
  if (model_.device() == Device::CPU) return;
  for (Slot& s : slots_) {
    s.lora->layer->A.copy_from(s.lora->a_dev);
    s.lora->layer->B.copy_from(s.lora->b_dev);
  }
  lora_.refresh();
  for (Slot& s : slots_) s.linear->adapter = s.training;
}

void LoraTraining::set_training(bool on) {
  state_->training = on;
}
void LoraTraining::set_step(uint64_t counter) {
  state_->counter = counter;
}

}  // namespace qtune
