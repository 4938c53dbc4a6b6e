// Training-mode IA3 adapter: PEFT's forward, the backward into the vectors (see ia3_train.h).
#include "train/ia3_train.h"

#include <map>

#include "core/error.h"
#include "peft/adapter_ops.h"
#include "train/linear_backward.h"

namespace qtune {

struct TrainIa3Adapter : LinearAdapter, TrainableAdapter {
  std::shared_ptr<Ia3Layer> layer;
  std::string key;  // "base_model.model.<module>.ia3_l"

  void apply(Tensor& out, const Tensor& x) const override { layer->apply(out, x); }
  bool transforms_input() const override { return layer->transforms_input(); }
  Tensor transform_input(const Tensor& x) const override { return layer->transform_input(x); }
  void backward(Tensor*, const Tensor&, const Tensor&, TrainableParams*) const override {}

  bool takes_over_backward() const override { return true; }
  bool backward_linear(const Linear& lin, Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy,
                       const Tensor& x, TrainableParams* params) const override {
    Tensor* gl = params ? params->grad(key) : nullptr;
    const Tensor& l = layer->l_dev;
    if (layer->feedforward) {
      Tensor xt = layer->transform_input(x);  // x ⊙ l [N, I], as the forward multiplied
      if (!dx && !gl) {
        if (dw || db) linear_backward_base(lin, nullptr, dw, db, dy, xt);
        return true;
      }
      Tensor g = Tensor::zeros(x.shape(), DType::F32, x.device());  // d(x ⊙ l) [N, I]
      linear_backward_base(lin, &g, dw, db, dy, xt);
      scale_columns_backward(dx, gl, g, &x, &l);  // dx += g ⊙ l, dl += Σ_n g ⊙ x
      return true;
    }
    if (gl) {  // dl += Σ_n dy ⊙ h with h = x·Wᵀ + b recomputed in the forward's dtype
      Tensor h = Tensor::empty(dy.shape(), x.dtype(), x.device());  // [N, O]
      lin.forward_base(h, x);
      scale_columns_backward(nullptr, gl, dy, &h, nullptr);
    }
    if (dx || dw || db) {
      Tensor dh = Tensor::empty(dy.shape(), dy.dtype(), dy.device());  // dy ⊙ l [N, O]
      scale_columns(dh, dy, l);
      linear_backward_base(lin, dx, dw, db, dh, x);
    }
    return true;
  }
};

Ia3Training::Ia3Training(Ia3Model& ia3, TrainableParams& params) : ia3_(ia3) {
  if (ia3.merged())
    throw_error(ErrorKind::Usage, "IA3 training: the adapter is merged into the base; unmerge it");
  std::map<std::string, Linear*> by_name;
  for (auto& [name, lin] : linear_modules(ia3.model())) by_name[name] = lin;
  for (const auto& l : ia3.layers()) {
    Linear* lin = by_name.at(l->module);
    if (!l->l_dev.defined()) l->refresh(ia3.model().device());
    auto a = std::make_shared<TrainIa3Adapter>();
    a->layer = l;
    a->key = "base_model.model." + l->module + ".ia3_l";
    slots_.push_back({lin, lin->adapter, a});
    lin->adapter = a;
    params.add(a->key, l->l_dev);
  }
}

Ia3Training::~Ia3Training() {
  try {
    sync_to_host();
  } catch (...) {  // a failing GPU must not turn unwinding into std::terminate
  }
  for (Slot& s : slots_) s.linear->adapter = s.original;
}

void Ia3Training::sync_to_host() {
  for (Slot& s : slots_)
    if (s.adapter->layer->l_dev.is_cuda()) s.adapter->layer->l.copy_from(s.adapter->layer->l_dev);
}

}  // namespace qtune
