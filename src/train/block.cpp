// Block forward/backward for training (see block.h). Every step is an op from ops/. On the CPU all
// tensors are F32. On CUDA activations (and the gradients that feed a GEMM) are BF16, as the model's
// weights; the residual-stream gradient and the d(norm input) accumulators stay F32.
#include "train/block.h"

#include "core/error.h"
#include "core/profile.h"
#include "ops/ops.h"
#include "train/linear_backward.h"
#include "train/lora_train.h"
#include "train/pass_scope.h"

namespace qtune {

namespace {

// The dtype of activations on a device: F32 on the CPU, BF16 on the GPU.
DType act_dtype(Device d) {
  return d == Device::CPU ? DType::F32 : DType::BF16;
}

}  // namespace

void BlockSaved::drop_activations() {
  full = false;
  h1 = q = k = v = att = lse = x_mid = h2 = gate = up = act = Tensor();
  attn_extra.clear();
}

void BlockSaved::drop_all_but_attention() {
  full = false;
  h1 = q = k = v = x_mid = h2 = gate = up = act = Tensor();
  attn_extra.clear();
}

int64_t BlockSaved::activation_bytes() const {
  int64_t n = 0;
  for (const Tensor* t : {&x_in, &h1, &q, &k, &v, &att, &lse, &x_mid, &h2, &gate, &up, &act})
    if (t->defined()) n += (int64_t)t->nbytes();
  for (const Tensor& t : attn_extra)
    if (t.defined()) n += (int64_t)t.nbytes();
  return n;
}

Block::Block(const ModelConfig& cfg, const LlamaLayer& layer, int index, TrainableParams* params)
    : L_(layer),
      index_(index),
      C_(cfg.hidden_size),
      F_(cfg.intermediate_size),
      Hq_(cfg.num_attention_heads),
      Hkv_(cfg.num_key_value_heads),
      D_(cfg.head_dim),
      eps_((float)cfg.rms_norm_eps),
      params_(params),
      dev_(layer.input_norm.device()),
      adt_(act_dtype(dev_)) {
  attn_train_ = dynamic_cast<const TrainableAttentionAdapter*>(L_.attn_adapter.get());
  if (!params) return;
  std::string pre = "model.layers." + std::to_string(index);
  g_in_norm_ = params->grad(pre + ".input_layernorm.weight");
  g_post_norm_ = params->grad(pre + ".post_attention_layernorm.weight");
  auto lg = [&](const Linear& lin) {
    return LinearGrads{params->grad(lin.name + ".weight"), params->grad(lin.name + ".bias")};
  };
  g_q_ = lg(L_.q);
  g_k_ = lg(L_.k);
  g_v_ = lg(L_.v);
  g_o_ = lg(L_.o);
  g_gate_ = lg(L_.gate);
  g_up_ = lg(L_.up);
  g_down_ = lg(L_.down);
  if (attn_train_ && (g_o_.w || g_o_.b || L_.o.adapter))
    throw_error(ErrorKind::Unsupported, "block ", index_, ": a LLaMA-Adapter trains with a frozen o_proj ",
                "without adapters (", L_.o.name, " is trainable or carries an adapter)");
}

bool Block::has_trainable() const {
  if (g_in_norm_ || g_post_norm_ || attn_train_) return true;
  for (const LinearGrads* g : {&g_q_, &g_k_, &g_v_, &g_o_, &g_gate_, &g_up_, &g_down_})
    if (g->w || g->b) return true;
  for (const Linear* l : {&L_.q, &L_.k, &L_.v, &L_.o, &L_.gate, &L_.up, &L_.down})
    if (l->adapter) return true;
  return false;
}

Tensor Block::act(const Shape& s) const {
  return Tensor::empty(s, adt_, dev_);
}

Tensor Block::grad_zeros(const Shape& s, bool gemm_input) const {
  return Tensor::zeros(s, gemm_input ? adt_ : DType::F32, dev_);
}

// d [N, C] F32 as the dy of a Linear backward: itself on the CPU, a BF16 copy on the GPU.
Tensor Block::gemm_grad(const Tensor& d) const {
  if (d.dtype() == adt_) return d;
  Tensor g = act(d.shape());
  convert(g, d);
  return g;
}

void Block::run_forward(const Tensor& x_in, Tensor* out, const BlockInputs& in, BlockSaved& s) const {
  const int64_t B = in.B, T = in.T, N = B * T;
  auto empty = [&](const Shape& sh) { return act(sh); };
  s.h1 = empty({N, C_});
  {
    QT_PROFILE("fwd.norm");
    rmsnorm_forward(s.h1, x_in, L_.input_norm, eps_);
  }
  s.q = empty({B, T, Hq_, D_});
  s.k = empty({B, T, Hkv_, D_});
  s.v = empty({B, T, Hkv_, D_});
  Tensor q2 = s.q.reshape({N, Hq_ * D_}), k2 = s.k.reshape({N, Hkv_ * D_}), v2 = s.v.reshape({N, Hkv_ * D_});
  {
    QT_PROFILE("fwd.linear");
    lora_forward_group({&L_.q, &L_.k, &L_.v}, s.h1);  // the LoRA mids of the three in one read of h1
    L_.q.forward(q2, s.h1);
    L_.k.forward(k2, s.h1);
    L_.v.forward(v2, s.h1);
  }
  Tensor qh = s.q.reshape({N, Hq_, D_}), kh = s.k.reshape({N, Hkv_, D_});
  {
    QT_PROFILE("fwd.rope");
    rope_forward(qh, in.positions, in.inv_freq);
    rope_forward(kh, in.positions, in.inv_freq);
  }
  // The backward's recompute finds the attention output kept (BlockInputs::keep_attention) and reuses it.
  const bool att_kept = !out && s.att.defined() && s.lse.defined();
  if (!att_kept) {
    s.att = empty({B, T, Hq_, D_});
    s.lse = Tensor::empty({B, T, Hq_}, DType::F32, dev_);
    QT_PROFILE("fwd.attention");
    if (in.prefixes)
      attention_forward_train_prefix(s.att, s.lse, s.q, s.k, s.v, (*in.prefixes)[index_], in.seq_ids);
    else
      attention_forward_train(s.att, s.lse, s.q, s.k, s.v, in.seq_ids);
  }
  s.x_mid = empty({N, C_});
  if (attn_train_) {  // o_proj(att) + o_proj(extra), as one product when o_proj has no bias
    Tensor extra = empty({N, Hq_ * D_});
    {
      QT_PROFILE("fwd.attn_adapter");
      attn_train_->forward_train(extra, s.attn_extra, s.q, L_);
    }
    QT_PROFILE("fwd.linear");
    if (L_.o.bias.defined()) {
      L_.o.forward(s.x_mid, s.att.reshape({N, Hq_ * D_}));
      Tensor o2 = empty({N, C_});
      L_.o.forward(o2, extra);
      add_inplace(s.x_mid, o2);
    } else {
      add_inplace(extra, s.att.reshape({N, Hq_ * D_}));
      L_.o.forward(s.x_mid, extra);
    }
  } else {
    QT_PROFILE("fwd.linear");
    L_.o.forward(s.x_mid, s.att.reshape({N, Hq_ * D_}));
    if (L_.attn_adapter) L_.attn_adapter->forward(s.x_mid, s.q, L_);  // forward-only add-on
  }
  s.h2 = empty({N, C_});
  {
    QT_PROFILE("fwd.norm");
    add_inplace(s.x_mid, x_in);  // x_mid = x + o_proj(att)
    rmsnorm_forward(s.h2, s.x_mid, L_.post_norm, eps_);
  }
  s.gate = empty({N, F_});
  s.up = empty({N, F_});
  s.act = empty({N, F_});
  {
    QT_PROFILE("fwd.linear");
    lora_forward_group({&L_.gate, &L_.up}, s.h2);
    L_.gate.forward(s.gate, s.h2);
    L_.up.forward(s.up, s.h2);
  }
  {
    QT_PROFILE("fwd.swiglu");
    swiglu_forward(s.act, s.gate, s.up);
  }
  s.full = true;
  if (!out) return;  // the recompute for the backward: nothing reads the block's output
  {
    QT_PROFILE("fwd.linear");
    L_.down.forward(*out, s.act);
  }
  {
    QT_PROFILE("fwd.norm");
    add_inplace(*out, s.x_mid);  // out = x_mid + down(act)
  }
}

void Block::forward(Tensor& x, const BlockInputs& in, BlockSaved& saved, bool checkpoint) const {
  const int64_t N = in.B * in.T;
  if (x.dtype() != adt_ || x.device() != dev_ || x.numel() != N * C_)
    throw_error(ErrorKind::Shape, "block ", index_, " forward: x must be ", device_name(dev_), " ",
                dtype_name(adt_), " [", N, ", ", C_, "], got ", x.describe());
  saved.x_in = x;  // kept as it is, not copied: x is rebound to the output below
  Tensor out = act({N, C_});
  saved.chunked = checkpoint && chunks(in);
  // An unchunked training block's forward, recompute and backward share one pass: its adapters' kept values
  // (LoRA mids) serve all three. A token-chunked one keeps them within each pass (train/pass_scope.h).
  const bool shared = params_ && !saved.chunked;
  PassScope pass(shared);
  saved.pass = shared ? pass.id() : 0;
  if (saved.chunked)
    forward_chunked(saved.x_in, out, in, saved);
  else
    run_forward(saved.x_in, &out, in, saved);
  if (checkpoint && in.keep_attention && !saved.chunked && !attn_train_ && !L_.attn_adapter)
    saved.drop_all_but_attention();
  else if (checkpoint)
    saved.drop_activations();
  x = out.reshape(x.shape());
}

void Block::attention_grads(const BlockInputs& in, const BlockSaved& s, const Tensor& d_att, Tensor& dq,
                            Tensor& dk, Tensor& dv) const {
  dq = grad_zeros(s.q.shape(), true);
  dk = grad_zeros(s.k.shape(), true);
  dv = grad_zeros(s.v.shape(), true);
  QT_PROFILE("bwd.attention");
  if (in.prefixes)
    attention_backward_prefix(dq, dk, dv, d_att, s.q, s.k, s.v, s.att, s.lse, (*in.prefixes)[index_],
                              in.seq_ids);
  else
    attention_backward(dq, dk, dv, d_att, s.q, s.k, s.v, s.att, s.lse, in.seq_ids);
}

void Block::backward(Tensor& dx, const BlockInputs& in, BlockSaved& s) const {
  const int64_t B = in.B, T = in.T, N = B * T;
  if (!s.x_in.defined()) throw_error(ErrorKind::Usage, "block ", index_, " backward: no saved forward");
  if (L_.attn_adapter && !attn_train_)
    throw_error(
        ErrorKind::Unsupported, "block ", index_,
        " backward: the layer's attention adapter (a LLaMA-Adapter attached for inference) cannot be ",
        "trained; train it through AdaptionPromptTraining (train/adaption_train.h)");
  if (dx.numel() != N * C_ || dx.dtype() != DType::F32 || dx.device() != dev_)
    throw_error(ErrorKind::Shape, "block ", index_, " backward: dx must be ", device_name(dev_), " F32 [", N,
                ", ", C_, "], got ", dx.describe());
  PassScope pass(true, s.pass);  // the forward's pass, or a fresh one for the recompute and the backward
  struct Forget {                // what the pass kept goes when the backward ends
    uint64_t id;
    ~Forget() { lora_forget_pass(id); }
  } forget{pass.id()};
  s.pass = 0;
  if (s.chunked) return backward_chunked(dx, in, s);
  if (!s.full)  // gradient checkpointing: recompute the activations (not the output) from the saved input
    run_forward(s.x_in, nullptr, in, s);
  Tensor dx2 = dx.reshape({N, C_});  // d(out), which is also the residual's share of d(x_mid)
  // MLP: out = x_mid + down(act), act = silu(gate)·up, gate/up = W·h2, h2 = rmsnorm(x_mid).
  // Gradient buffers a first product writes whole are not zeroed (linear_backward's overwrite_dx).
  Tensor d_act = act({N, F_});
  {
    QT_PROFILE("bwd.linear");
    linear_backward(L_.down, &d_act, g_down_.w, g_down_.b, gemm_grad(dx2), s.act, params_, true);
  }
  Tensor d_gate = act({N, F_}), d_up = act({N, F_});  // written whole by the SwiGLU backward
  {
    QT_PROFILE("bwd.swiglu");
    swiglu_backward(d_gate, d_up, d_act, s.gate, s.up, /*accumulate=*/false);
  }
  d_act = Tensor();
  Tensor d_h = Tensor::empty({N, C_}, DType::F32, dev_);
  {
    QT_PROFILE("bwd.linear");
    linear_backward(L_.gate, &d_h, g_gate_.w, g_gate_.b, d_gate, s.h2, params_, true);
    linear_backward(L_.up, &d_h, g_up_.w, g_up_.b, d_up, s.h2, params_);
  }
  d_gate = d_up = Tensor();
  {
    QT_PROFILE("bwd.norm");
    rmsnorm_backward(dx2, g_post_norm_, d_h, s.x_mid, L_.post_norm, eps_);  // dx2 = d(x_mid)
  }
  // Attention: x_mid = x + o(att), att = attn(rope(q), rope(k), v), q/k/v = W·h1, h1 = rmsnorm(x).
  Tensor d_att = act({B, T, Hq_, D_});
  Tensor d_att2 = d_att.reshape({N, Hq_ * D_});
  {
    QT_PROFILE("bwd.linear");
    linear_backward(L_.o, &d_att2, g_o_.w, g_o_.b, gemm_grad(dx2), s.att.reshape({N, Hq_ * D_}), params_,
                    true);
  }
  Tensor dq, dk, dv;
  attention_grads(in, s, d_att, dq, dk, dv);
  if (attn_train_) {  // d(extra) = d(att): both went through the same o_proj
    QT_PROFILE("bwd.attn_adapter");
    attn_train_->backward_train(dq, d_att2, s.q, s.attn_extra, L_, params_);
  }
  d_att = d_att2 = Tensor();
  Tensor dqh = dq.reshape({N, Hq_, D_}), dkh = dk.reshape({N, Hkv_, D_});
  {
    QT_PROFILE("bwd.rope");
    rope_backward(dqh, in.positions, in.inv_freq);
    rope_backward(dkh, in.positions, in.inv_freq);
  }
  {
    QT_PROFILE("bwd.linear");
    linear_backward(L_.q, &d_h, g_q_.w, g_q_.b, dq.reshape({N, Hq_ * D_}), s.h1, params_, true);
    linear_backward(L_.k, &d_h, g_k_.w, g_k_.b, dk.reshape({N, Hkv_ * D_}), s.h1, params_);
    linear_backward(L_.v, &d_h, g_v_.w, g_v_.b, dv.reshape({N, Hkv_ * D_}), s.h1, params_);
  }
  {
    QT_PROFILE("bwd.norm");
    rmsnorm_backward(dx2, g_in_norm_, d_h, s.x_in, L_.input_norm, eps_);  // dx2 = d(x_in)
  }
  s.drop_activations();
}

}  // namespace qtune
