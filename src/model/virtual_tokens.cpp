// Virtual tokens ahead of a prompt: checks, the prefix cache rows, and the prefill (see virtual_tokens.h).
#include "model/virtual_tokens.h"

#include "core/error.h"
#include "ops/ops.h"

namespace qtune {

int64_t VirtualTokens::count() const {
  if (embeds.defined()) return embeds.size(0);
  return keys.empty() ? 0 : keys[0].size(0);
}

void check_virtual_tokens(const LlamaModel& model, const VirtualTokens& vt, const std::string& what) {
  const ModelConfig& c = model.config();
  const int64_t P = vt.count(), W = c.num_key_value_heads * c.head_dim;
  if (vt.embeds.defined()) {
    if (vt.embeds.ndim() != 2 || vt.embeds.size(1) != c.hidden_size || vt.embeds.dtype() != DType::F32)
      throw_error(ErrorKind::Shape, what, ": virtual token embeddings ", vt.embeds.describe(),
                  " do not fit the model's hidden size ", c.hidden_size, " (F32 [P, ", c.hidden_size, "])");
    if (!vt.keys.empty())
      throw_error(ErrorKind::Shape, what, ": both virtual token embeddings and prefix key/values given");
    return;
  }
  if (vt.keys.empty()) return;
  if ((int)vt.keys.size() != c.num_hidden_layers || vt.values.size() != vt.keys.size())
    throw_error(ErrorKind::Shape, what, ": prefix key/values for ", vt.keys.size(), " / ", vt.values.size(),
                " layers; the model has ", c.num_hidden_layers);
  for (size_t l = 0; l < vt.keys.size(); l++)
    for (const Tensor* t : {&vt.keys[l], &vt.values[l]})
      if (t->ndim() != 2 || t->size(0) != P || t->size(1) != W)
        throw_error(ErrorKind::Shape, what, ": layer ", l, " prefix ", t->describe(), " must be [", P, ", ",
                    W, "] (num_key_value_heads x head_dim = ", c.num_key_value_heads, " x ", c.head_dim, ")");
}

// t in the cache's dtype on its device.
static Tensor to_cache_form(const Tensor& t, DType dt, Device dev) {
  if (t.dtype() == dt && t.device() == dev) return t;
  return t.to(Device::CPU).to_dtype(dt).to(dev);
}

void write_prefix(KVCache& cache, const LlamaModel& model, const VirtualTokens& vt) {
  if (vt.keys.empty()) return;
  check_virtual_tokens(model, vt, "write_prefix");
  const int64_t P = vt.count(), B = cache.batch();
  if (P > cache.max_seq())
    throw_error(ErrorKind::Shape, "write_prefix: ", P, " prefix rows do not fit the KV cache of ",
                cache.max_seq(), " positions");
  const DType dt = cache.k(0).dtype();
  const Device dev = cache.k(0).device();
  for (int l = 0; l < cache.layers(); l++) {
    Tensor k = to_cache_form(vt.keys[l], dt, dev), v = to_cache_form(vt.values[l], dt, dev);  // [P, W]
    if (B > 1) {  // the same rows for every sequence: [B·P, W], batch-major
      Tensor kb = Tensor::empty({B * P, k.size(1)}, dt, dev), vb = Tensor::empty({B * P, v.size(1)}, dt, dev);
      for (int64_t b = 0; b < B; b++) {
        Tensor kd = kb.slice0(b * P, P), vd = vb.slice0(b * P, P);
        kd.copy_from(k);
        vd.copy_from(v);
      }
      k = kb;
      v = vb;
    }
    cache.write(l, k, v, 0, P);
  }
}

Tensor forward_with_virtual_tokens(const LlamaModel& model, const Tensor& ids, KVCache& cache,
                                   const VirtualTokens& vt, bool last_only) {
  check_virtual_tokens(model, vt, "forward_with_virtual_tokens");
  const int64_t P = vt.count();
  if (P == 0) return model.forward(ids, cache, 0, last_only);
  if (!vt.keys.empty()) {
    write_prefix(cache, model, vt);
    return model.forward(ids, cache, P, last_only);
  }
  if (ids.ndim() != 2 || ids.dtype() != DType::I32)
    throw_error(ErrorKind::Shape, "forward_with_virtual_tokens: ids must be I32 [B, T], got ",
                ids.describe());
  const int64_t B = ids.size(0), T = ids.size(1), C = model.config().hidden_size,
                V = model.config().vocab_size;
  const Device dev = model.device();
  const DType act = model.activation_dtype();
  if (T == 0) throw_error(ErrorKind::Shape, "forward_with_virtual_tokens: no tokens");
  Tensor tok = Tensor::empty({B * T, C}, DType::F32, dev);  // the prompt's embeddings [B·T, C]
  embedding_forward(tok, ids.to(dev), model.embed_tokens());
  Tensor virt = vt.embeds.to(dev);  // F32 [P, C]
  Tensor x =
      Tensor::empty({B * (P + T), C}, DType::F32, dev);  // [B·(P+T), C]: virtual rows, then the prompt's
  for (int64_t b = 0; b < B; b++) {
    Tensor xv = x.slice0(b * (P + T), P), xt = x.slice0(b * (P + T) + P, T);
    xv.copy_from(virt);
    xt.copy_from(tok.slice0(b * T, T));
  }
  Tensor xa = x;
  if (act != DType::F32) {
    xa = Tensor::empty(x.shape(), act, dev);
    convert(xa, x);
  }
  Tensor logits = model.forward_embeds(xa.reshape({B, P + T, C}), cache, 0, last_only);  // [B, P+T or 1, V]
  if (last_only) return logits;
  Tensor out = Tensor::empty({B * T, V}, DType::F32, dev);
  Tensor all = logits.reshape({B * (P + T), V});
  for (int64_t b = 0; b < B; b++) {
    Tensor o = out.slice0(b * T, T);
    o.copy_from(all.slice0(b * (P + T) + P, T));
  }
  return out.reshape({B, T, V});
}

}  // namespace qtune
