// Training-mode LoRA adapter (see lora_train.h): forward with dropout, backward into A and B.
#include "train/lora_train.h"

#include <cblas.h>

#include <cstring>
#include <map>

#include "core/error.h"
#include "train/linear_backward.h"

namespace qtune {
namespace {

// splitmix64: the dropout mask bit of one element, reproducible from its coordinates.
inline uint64_t mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct TrainLoraAdapter : LinearAdapter, TrainableAdapter {
  std::shared_ptr<LoraLayer> layer;
  std::shared_ptr<const LoraTraining::State> state;
  uint64_t layer_id = 0;
  std::string key_a, key_b;

  bool dropping() const { return state->training && state->dropout > 0; }

  // x with dropout applied (scaled by 1/(1-p)), [N, I].
  Tensor dropped(const Tensor& x) const {
    Tensor d = Tensor::empty(x.shape(), DType::F32);
    const float* src = x.data<float>();
    float* dst = d.data<float>();
    const double p = state->dropout;
    const float keep = (float)(1.0 / (1.0 - p));
    const uint64_t base = mix(state->seed ^ mix(state->counter * 1000003ull + layer_id));
    const uint64_t threshold = (uint64_t)(p * 18446744073709551616.0);
    const int64_t n = x.numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) dst[i] = mix(base + (uint64_t)i) < threshold ? 0.0f : src[i] * keep;
    return d;
  }

  void apply(Tensor& out, const Tensor& x) const override {
    if (!dropping()) {
      layer->apply(out, x);
      return;
    }
    layer->apply(out, dropped(x));
  }

  void backward(Tensor* dx, const Tensor& dy, const Tensor& x, TrainableParams* params) const override {
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
};

}  // namespace

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
    if (l->magnitude.defined())
      throw_error(ErrorKind::Unsupported, "training DoRA adapters is not implemented yet (module ", l->module,
                  "); train plain LoRA (drop --use-dora)");
    auto it = by_name.find(l->module);
    if (it == by_name.end())
      throw_error(ErrorKind::Internal, "LoRA module ", l->module, " is not in the model");
    if (l->A.device() != Device::CPU || model.device() != Device::CPU)
      throw_error(ErrorKind::Unsupported, "LoRA training runs on the CPU only so far");
    auto a = std::make_shared<TrainLoraAdapter>();
    a->layer = l;
    a->state = state_;
    a->layer_id = id++;
    a->key_a = prefix + l->module + ".lora_A.weight";
    a->key_b = prefix + l->module + ".lora_B.weight";
    slots_.push_back({it->second, it->second->adapter, a});
    it->second->adapter = a;
  }
  for (const auto& l : lora.layers()) {
    params.add(prefix + l->module + ".lora_A.weight", l->A);
    params.add(prefix + l->module + ".lora_B.weight", l->B);
  }
  if (lora.trainable().size() != 2 * lora.layers().size())
    throw_error(ErrorKind::Unsupported,
                "training LoRA biases or modules_to_save is not implemented yet (bias must be \"none\")");
}

LoraTraining::~LoraTraining() {
  for (Slot& s : slots_) s.linear->adapter = s.original;
}

void LoraTraining::refresh() {
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
