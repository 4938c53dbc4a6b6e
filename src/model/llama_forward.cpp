// LlamaModel::forward: embedding → per layer [RMSNorm → q/k/v → RoPE → cache write → causal GQA attention →
// o_proj (+ an AttentionAdapter's output) → residual; RMSNorm → SwiGLU MLP → residual] → final RMSNorm →
// lm_head (F32 logits). Every step is an op from ops/, so the same code runs on the CPU (f32) and CUDA (bf16
// activations). A model split by a device map runs each module on its device and moves the residual stream
// between them (bf16 over the bus, converted to f32 on the CPU side).
#include <vector>

#include "core/error.h"
#include "model/llama_model.h"
#include "ops/ops.h"

namespace qtune {

namespace {

DType act_dtype_of(Device d) {
  return d == Device::CPU ? DType::F32 : DType::BF16;
}

// The residual stream x [N, C] on dev in that device's activation dtype (the same tensor when already
// there). Conversions run on the CPU, so bf16 crosses the bus in both directions.
Tensor stream_to(const Tensor& x, Device dev) {
  if (x.device() == dev) return x;
  if (dev == Device::CPU) {
    Tensor host = x.to(Device::CPU);  // BF16
    Tensor out = Tensor::empty(x.shape(), DType::F32, Device::CPU);
    convert(out, host);
    return out;
  }
  Tensor host = Tensor::empty(x.shape(), act_dtype_of(dev), Device::CPU);
  convert(host, x);
  return host.to(dev);
}

// One device's scratch for a forward over N = B·T tokens, in that device's activation dtype.
struct Work {
  Tensor pos, inv_freq;             // I32 [N] positions, F32 [D/2]
  Tensor h, q, att, proj, g, u, a;  // [N, C], [N, Hq·D] x2, [N, C], [N, F] x3
  Tensor k, v;                      // [N, Hkv·D] staging for batch > 1
};

Work make_work(Device dev, const ModelConfig& c, int64_t N, bool stage_kv, const Tensor& pos_host,
               const Tensor& inv_freq) {
  const int64_t C = c.hidden_size, F = c.intermediate_size;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
  const DType act = act_dtype_of(dev);
  Work w;
  w.pos = pos_host.to(dev);
  w.inv_freq = inv_freq.to(dev);
  w.h = Tensor::empty({N, C}, act, dev);  // normed input
  w.q = Tensor::empty({N, Hq * D}, act, dev);
  w.att = Tensor::empty({N, Hq * D}, act, dev);
  w.proj = Tensor::empty({N, C}, act, dev);  // o_proj / down_proj output
  w.g = Tensor::empty({N, F}, act, dev);
  w.u = Tensor::empty({N, F}, act, dev);
  w.a = Tensor::empty({N, F}, act, dev);
  if (stage_kv) {
    w.k = Tensor::empty({N, Hkv * D}, act, dev);
    w.v = Tensor::empty({N, Hkv * D}, act, dev);
  }
  return w;
}

}  // namespace

KVCache LlamaModel::make_cache(int64_t batch, int64_t max_seq) const {
  if (batch <= 0 || max_seq <= 0)
    throw_error(ErrorKind::Usage, "KV cache: batch (", batch, ") and max_seq (", max_seq,
                ") must be positive");
  if (map_.split()) {  // each layer's rows beside its weights
    std::vector<std::pair<DType, Device>> per_layer;
    for (const LlamaLayer& L : layers_) per_layer.emplace_back(act_dtype_of(L.device), L.device);
    return KVCache(per_layer, batch, max_seq, cfg_.num_key_value_heads, cfg_.head_dim);
  }
  return KVCache(cfg_.num_hidden_layers, batch, max_seq, cfg_.num_key_value_heads, cfg_.head_dim, act_dtype_,
                 device_);
}

Tensor LlamaModel::forward(const Tensor& ids) const {
  if (ids.ndim() != 2) throw_error(ErrorKind::Shape, "forward: ids must be [B, T], got ", ids.describe());
  KVCache cache = make_cache(ids.size(0), ids.size(1));
  return forward(ids, cache, 0, false);
}

Tensor LlamaModel::forward(const Tensor& ids_in, KVCache& cache, int64_t start_pos, bool last_only) const {
  if (ids_in.ndim() != 2 || ids_in.dtype() != DType::I32)
    throw_error(ErrorKind::Shape, "forward: ids must be I32 [B, T], got ", ids_in.describe());
  const int64_t B = ids_in.size(0), T = ids_in.size(1), N = B * T;
  const int64_t V = cfg_.vocab_size;
  if (T == 0) throw_error(ErrorKind::Shape, "forward: no tokens (ids ", ids_in.describe(), ")");
  if (ids_in.device() == Device::CPU) {  // checked here too, so device kernels never read out of range
    const int32_t* id = ids_in.data<int32_t>();
    for (int64_t i = 0; i < N; i++)
      if (id[i] < 0 || id[i] >= V)
        throw_error(ErrorKind::Shape, "forward: token id ", id[i], " at position ", i,
                    " is outside the vocabulary [0, ", V, ")");
  }
  const Device ed = map_.embed;
  Tensor ids = ids_in.to(ed);                                             // [B, T]
  Tensor x = Tensor::empty({N, cfg_.hidden_size}, act_dtype_of(ed), ed);  // residual stream [N, C]
  embedding_forward(x, ids, embed_);
  return forward_hidden(x, B, T, cache, start_pos, last_only);
}

Tensor LlamaModel::forward_embeds(const Tensor& x_in, KVCache& cache, int64_t start_pos,
                                  bool last_only) const {
  const int64_t C = cfg_.hidden_size;
  if (x_in.ndim() != 3 || x_in.size(2) != C || (x_in.dtype() != DType::F32 && x_in.dtype() != act_dtype_))
    throw_error(ErrorKind::Shape, "forward_embeds: x must be F32 or ", dtype_name(act_dtype_), " [B, T, ", C,
                "], got ", x_in.describe());
  const int64_t B = x_in.size(0), T = x_in.size(1);
  if (T == 0) throw_error(ErrorKind::Shape, "forward_embeds: no tokens (x ", x_in.describe(), ")");
  Tensor src = x_in.to(device_).reshape({B * T, C});
  Tensor x = Tensor::empty({B * T, C}, act_dtype_, device_);  // residual stream [N, C]
  if (src.dtype() == act_dtype_)
    x.copy_from(src);
  else
    convert(x, src);
  return forward_hidden(x, B, T, cache, start_pos, last_only);
}

Tensor LlamaModel::forward_hidden(Tensor& x, int64_t B, int64_t T, KVCache& cache, int64_t start_pos,
                                  bool last_only) const {
  const int64_t N = B * T;
  const int64_t C = cfg_.hidden_size, V = cfg_.vocab_size;
  const int64_t Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads, D = cfg_.head_dim;
  const float eps = (float)cfg_.rms_norm_eps;
  if (cache.batch() != B || cache.layers() != cfg_.num_hidden_layers)
    throw_error(ErrorKind::Shape, "forward: the KV cache is for batch ", cache.batch(), ", ids have batch ",
                B);
  if (start_pos < 0 || start_pos + T > cache.max_seq())
    throw_error(ErrorKind::Shape, "forward: positions [", start_pos, ", ", start_pos + T,
                ") exceed the KV cache of ", cache.max_seq(), " positions");
  if (cfg_.sliding_window > 0 && start_pos + T > cfg_.sliding_window)
    throw_error(ErrorKind::Unsupported, "forward: ", start_pos + T, " tokens exceed the sliding window (",
                cfg_.sliding_window, ") and sliding-window attention is not implemented");
  std::vector<int32_t> pos_host(N);
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++) pos_host[b * T + t] = (int32_t)(start_pos + t);
  const Tensor pos_cpu = Tensor::from_i32(pos_host, {N});  // [N]

  const bool direct = B == 1;  // batch 1: K/V projections write straight into the cache rows
  Work work[2];                // scratch per device (CPU, CUDA), made when a layer first runs there
  auto work_on = [&](Device d) -> Work& {
    Work& w = work[d == Device::CPU ? 0 : 1];
    if (!w.h.defined()) w = make_work(d, cfg_, N, !direct, pos_cpu, inv_freq_);
    return w;
  };

  for (int l = 0; l < cfg_.num_hidden_layers; l++) {
    const LlamaLayer& L = layers_[l];
    if (cache.k(l).device() != L.device)
      throw_error(ErrorKind::Shape, "forward: the KV cache of layer ", l, " is on ",
                  device_name(cache.k(l).device()), " but the layer runs on ", device_name(L.device),
                  " (make the cache with make_cache)");
    x = stream_to(x, L.device);  // [N, C]
    Work& w = work_on(L.device);
    Tensor q_heads = w.q.reshape({N, Hq, D});
    Tensor q4 = w.q.reshape({B, T, Hq, D}), att4 = w.att.reshape({B, T, Hq, D});
    Tensor kl = direct ? cache.k_rows(l, start_pos, T) : w.k;  // [N, Hkv·D]
    Tensor vl = direct ? cache.v_rows(l, start_pos, T) : w.v;  // [N, Hkv·D]
    Tensor k_heads = kl.reshape({N, Hkv, D});
    rmsnorm_forward(w.h, x, L.input_norm, eps);
    linear_forward_shared({&w.q, &kl, &vl}, w.h, {&L.q, &L.k, &L.v});  // one launch at decode
    rope_forward(q_heads, w.pos, w.inv_freq);
    rope_forward(k_heads, w.pos, w.inv_freq);
    if (!direct) cache.write(l, w.k, w.v, start_pos, T);
    attention_forward(att4, q4, cache.k(l), cache.v(l), start_pos, start_pos + T);
    L.o.forward(w.proj, w.att);
    if (L.attn_adapter) L.attn_adapter->forward(w.proj, q4, L);
    add_inplace(x, w.proj);

    rmsnorm_forward(w.h, x, L.post_norm, eps);
    linear_forward_shared({&w.g, &w.u}, w.h, {&L.gate, &L.up});
    swiglu_forward(w.a, w.g, w.u);
    L.down.forward(w.proj, w.a);
    add_inplace(x, w.proj);
  }

  Tensor last = x;  // rows that get logits: all [N, C], or the last of each sequence [B, C]
  int64_t Tout = T;
  if (last_only && T > 1) {
    last = Tensor::empty({B, C}, x.dtype(), x.device());
    for (int64_t b = 0; b < B; b++) {
      Tensor dst = last.slice0(b, 1);
      dst.copy_from(x.slice0(b * T + T - 1, 1));
    }
    Tout = 1;
  } else if (last_only) {
    Tout = 1;
  }
  last = stream_to(last, map_.norm);
  Tensor hn = Tensor::empty(last.shape(), last.dtype(), map_.norm);
  rmsnorm_forward(hn, last, norm_, eps);
  hn = stream_to(hn, map_.lm_head);
  Tensor logits = Tensor::empty({B * Tout, V}, DType::F32, map_.lm_head);  // [B·T', V]
  lm_head_.forward(logits, hn);
  return logits.reshape({B, Tout, V});
}

}  // namespace qtune
