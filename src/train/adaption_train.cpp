// Training-mode LLaMA-Adapter add-on: the forward of peft/adaption_prompt.h from the registered prompt and
// gate, and its backward (see adaption_train.h).
#include "train/adaption_train.h"

#include "core/error.h"
#include "ops/elementwise.h"
#include "peft/adaption_attention.h"
#include "train/block.h"
#include "train/linear_backward.h"

namespace qtune {

struct TrainAdaptionAttention : AttentionAdapter, TrainableAttentionAdapter {
  int64_t Lp = 0, C = 0, Hkv = 0, D = 0;
  Tensor prompt, gate;                // F32 [1, Lp, C], [1] where the layer runs (registered)
  Tensor master_prompt, master_gate;  // the AdaptionPromptModel's F32 CPU tensors
  std::string key;                    // "base_model.model.model.layers.<i>.self_attn."

  float gate_value() const { return gate.to(Device::CPU).data<float>()[0]; }

  // The prompt in dtype dt (a [Lp, C]) and its keys and values k, v [Lp, Hkv·D] through the frozen
  // k_proj / v_proj (with their biases, as PEFT's k_proj(adaption_prompt)).
  void prompt_kv(Tensor& a, Tensor& k, Tensor& v, const LlamaLayer& L, DType dt) const {
    Tensor p = prompt.reshape({Lp, C});
    if (p.dtype() == dt) {
      a = p;
    } else {
      a = Tensor::empty({Lp, C}, dt, p.device());
      convert(a, p);
    }
    k = Tensor::empty({Lp, Hkv * D}, dt, p.device());
    v = Tensor::empty({Lp, Hkv * D}, dt, p.device());
    L.k.forward(k, a);
    L.v.forward(v, a);
  }

  // q [B, T, Hq, D] → extra [N, Hq·D] = g·softmax(q·Kᵀ/√D)·V; saved = {a, k, v, probs}.
  void forward_train(Tensor& extra, std::vector<Tensor>& saved, const Tensor& q,
                     const LlamaLayer& L) const override {
    const int64_t Hq = q.size(2), N = q.numel() / (Hq * D);
    Tensor a, k, v;
    prompt_kv(a, k, v, L, q.dtype());
    Tensor probs = Tensor::empty({N, Hq, Lp}, DType::F32, q.device());
    Tensor out = extra.reshape({N, Hq, D});
    adaption_attention_forward(out, probs, q.reshape({N, Hq, D}), k.reshape({Lp, Hkv, D}),
                               v.reshape({Lp, Hkv, D}), gate_value());
    saved = {a, k, v, probs};
  }

  // Inference (model.forward, evaluation): proj [N, C] += o_proj(extra).
  void forward(Tensor& proj, const Tensor& q, const LlamaLayer& L) const override {
    const int64_t Hq = q.size(2), N = q.numel() / (Hq * D);
    std::vector<Tensor> saved;
    Tensor extra = Tensor::empty({N, Hq * D}, q.dtype(), q.device());
    forward_train(extra, saved, q, L);
    Tensor o = Tensor::empty(proj.shape(), proj.dtype(), proj.device());
    L.o.forward(o, extra);
    add_inplace(proj, o);
  }

  void backward_train(Tensor& dq, const Tensor& d_extra, const Tensor& q, const std::vector<Tensor>& saved,
                      const LlamaLayer& L, TrainableParams* params) const override {
    if (saved.size() != 4) throw_error(ErrorKind::Internal, key, ": backward without its forward");
    const Tensor &a = saved[0], &k = saved[1], &v = saved[2], &probs = saved[3];
    const int64_t Hq = q.size(2), N = q.numel() / (Hq * D);
    Tensor* g_prompt = params ? params->grad(key + "adaption_prompt") : nullptr;
    Tensor* g_gate = params ? params->grad(key + "adaption_gate") : nullptr;
    Tensor dk = Tensor::empty({Lp, Hkv * D}, q.dtype(), q.device());
    Tensor dv = Tensor::empty({Lp, Hkv * D}, q.dtype(), q.device());
    Tensor dq3 = dq.reshape({N, Hq, D}), dk3 = dk.reshape({Lp, Hkv, D}), dv3 = dv.reshape({Lp, Hkv, D});
    adaption_attention_backward(dq3, dk3, dv3, g_gate, d_extra.reshape({N, Hq, D}), q.reshape({N, Hq, D}),
                                k.reshape({Lp, Hkv, D}), v.reshape({Lp, Hkv, D}), probs, gate_value());
    if (!g_prompt) return;
    Tensor da = g_prompt->reshape({Lp, C});  // dA += dK·W_k + dV·W_v
    linear_backward(L.k, &da, nullptr, nullptr, dk, a);
    linear_backward(L.v, &da, nullptr, nullptr, dv, a);
  }
};

AdaptionPromptTraining::AdaptionPromptTraining(AdaptionPromptModel& ap, TrainableParams& params) : ap_(ap) {
  LlamaModel& model = ap.model();
  const ModelConfig& mc = model.config();
  for (AdaptionPromptModel::Layer& x : ap.layers()) {
    LlamaLayer& L = model.mutable_layers()[x.index];
    auto t = std::make_shared<TrainAdaptionAttention>();
    t->Lp = ap.config().adapter_len;
    t->C = mc.hidden_size;
    t->Hkv = mc.num_key_value_heads;
    t->D = mc.head_dim;
    t->master_prompt = x.prompt;
    t->master_gate = x.gate;
    t->prompt = L.device == Device::CPU ? x.prompt : x.prompt.to(L.device);
    t->gate = L.device == Device::CPU ? x.gate : x.gate.to(L.device);
    t->key = "base_model.model.model.layers." + std::to_string(x.index) + ".self_attn.";
    params.add(t->key + "adaption_prompt", t->prompt);
    params.add(t->key + "adaption_gate", t->gate);
    L.attn_adapter = t;
    layers_.push_back(t);
  }
}

AdaptionPromptTraining::~AdaptionPromptTraining() {
  try {
    sync_to_host();
    ap_.refresh();  // the inference add-ons, from the trained masters
  } catch (...) {   // a failing GPU must not turn unwinding into std::terminate
  }
}

void AdaptionPromptTraining::sync_to_host() {
  for (auto& t : layers_) {
    if (!t->prompt.is_cuda()) continue;
    t->master_prompt.copy_from(t->prompt);
    t->master_gate.copy_from(t->gate);
  }
}

}  // namespace qtune
