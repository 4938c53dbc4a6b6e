// Training-mode bottleneck adapter: the forward of peft/bottleneck_model.h and its backward (see
// bottleneck_train.h).
#include "train/bottleneck_train.h"

#include <map>

#include "core/error.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "peft/adapter_ops.h"
#include "train/linear_backward.h"

namespace qtune {

struct TrainBottleneckAdapter : LinearAdapter, TrainableAdapter {
  std::shared_ptr<BottleneckLayer> layer;
  std::string key;  // "base_model.model.<module>"

  void apply(Tensor& out, const Tensor& x) const override { layer->apply(out, x); }
  void backward(Tensor*, const Tensor&, const Tensor&, TrainableParams*) const override {}

  bool takes_over_backward() const override { return true; }
  bool backward_linear(const Linear& lin, Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy,
                       const Tensor& x, TrainableParams* params) const override {
    const BottleneckLayer& L = *layer;
    const int64_t C = L.C, r = L.r, N = dy.numel() / C;
    const Device dev = dy.device();
    auto grad = [&](const char* part) { return params ? params->grad(key + part) : nullptr; };
    // The forward again from h = base(x): z = down(h), a = act(z).
    Tensor h = Tensor::empty({N, C}, x.dtype(), dev);
    lin.forward_base(h, x);
    Tensor h32 = h;
    if (h.dtype() != DType::F32) {
      h32 = Tensor::empty({N, C}, DType::F32, dev);
      convert(h32, h);
    }
    h = Tensor();
    Tensor z, a;
    L.inner(h32, z, a);                                 // [N, r] each
    Tensor g = Tensor::empty({N, C}, DType::F32, dev);  // dy in f32, then dh
    convert(g, dy.reshape({N, C}));
    if (Tensor* gw = grad(".adapter_up.weight")) matmul(*gw, g, a, true, false, 1.0f, 1.0f);  // += dyᵀ·a
    if (Tensor* gb = grad(".adapter_up.bias")) scale_columns_backward(nullptr, gb, g, nullptr, nullptr);
    Tensor dz = Tensor::empty({N, r}, DType::F32, dev);
    matmul(dz, g, L.up_w_d, false, false);   // da = dy·up [N, r]
    adapter_act_backward(dz, dz, z, L.act);  // dz = da ⊙ act'(z)
    if (Tensor* gw = grad(".adapter_down.weight")) matmul(*gw, dz, h32, true, false, 1.0f, 1.0f);  // += dzᵀ·h
    if (Tensor* gb = grad(".adapter_down.bias")) scale_columns_backward(nullptr, gb, dz, nullptr, nullptr);
    if (!dx && !dw && !db) return true;
    matmul(g, dz, L.down_w_d, false, false, 1.0f, 1.0f);  // dh = dy + dz·down [N, C]
    Tensor dh = g;
    if (dy.dtype() != DType::F32) {  // the base GEMM reads dy's dtype (BF16 on CUDA)
      dh = Tensor::empty({N, C}, dy.dtype(), dev);
      convert(dh, g);
    }
    linear_backward_base(lin, dx, dw, db, dh.reshape(dy.shape()), x);
    return true;
  }
};

BottleneckTraining::BottleneckTraining(BottleneckModel& adapters, TrainableParams& params) {
  std::map<std::string, Linear*> by_name;
  for (auto& [name, lin] : linear_modules(adapters.model())) by_name[name] = lin;
  for (const auto& l : adapters.layers()) {
    Linear* lin = by_name.at(l->module);
    if (!l->down_w_d.defined()) l->refresh(adapters.model().device());
    auto a = std::make_shared<TrainBottleneckAdapter>();
    a->layer = l;
    a->key = "base_model.model." + l->module;
    slots_.push_back({lin, lin->adapter, a});
    lin->adapter = a;
    params.add(a->key + ".adapter_down.weight", l->down_w_d);
    params.add(a->key + ".adapter_down.bias", l->down_b_d);
    params.add(a->key + ".adapter_up.weight", l->up_w_d);
    params.add(a->key + ".adapter_up.bias", l->up_b_d);
  }
}

BottleneckTraining::~BottleneckTraining() {
  try {
    sync_to_host();
  } catch (...) {  // a failing GPU must not turn unwinding into std::terminate
  }
  for (Slot& s : slots_) s.linear->adapter = s.original;
}

void BottleneckTraining::sync_to_host() {
  for (Slot& s : slots_) {
    BottleneckLayer& l = *s.adapter->layer;
    if (!l.down_w_d.is_cuda()) continue;
    l.down_w.copy_from(l.down_w_d);
    l.down_b.copy_from(l.down_b_d);
    l.up_w.copy_from(l.up_w_d);
    l.up_b.copy_from(l.up_b_d);
  }
}

}  // namespace qtune
