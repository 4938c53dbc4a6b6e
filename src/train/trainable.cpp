// TrainableParams (see trainable.h).
#include "train/trainable.h"

#include "core/error.h"
#include "model/llama_model.h"
#ifdef QTUNE_HAVE_CUDA
#include "optim/cuda/clip_cuda.h"
#endif

namespace qtune {

Tensor& TrainableParams::add(const std::string& name, const Tensor& param) {
  if (!param.defined()) throw_error(ErrorKind::Usage, "trainable parameter '", name, "' is undefined");
  if (index_.count(name)) throw_error(ErrorKind::Usage, "trainable parameter '", name, "' registered twice");
  index_[name] = entries_.size();
  entries_.push_back({name, param, Tensor::zeros(param.shape(), DType::F32, param.device())});
  return entries_.back().grad;
}

Tensor* TrainableParams::grad(const std::string& name) {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second].grad;
}

const TrainableParams::Entry& TrainableParams::at(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw_error(ErrorKind::Usage, "no trainable parameter named '", name, "'");
  return entries_[it->second];
}

void TrainableParams::zero_grads() {
  std::vector<float*> dev_x;  // F32 GPU gradients: zeroed in one launch
  std::vector<int64_t> dev_n;
  for (Entry& e : entries_) {
#ifdef QTUNE_HAVE_CUDA
    if (e.grad.is_cuda() && e.grad.dtype() == DType::F32) {
      dev_x.push_back(e.grad.data<float>());
      dev_n.push_back(e.grad.numel());
      continue;
    }
#endif
    e.grad.set_zero();
  }
#ifdef QTUNE_HAVE_CUDA
  if (!dev_x.empty()) zero_cuda(dev_x, dev_n);
#endif
}

int64_t TrainableParams::numel() const {
  int64_t n = 0;
  for (const Entry& e : entries_) n += e.param.numel();
  return n;
}

static void add_linear(TrainableParams& p, const Linear& lin) {
  if (lin.quantized())
    throw_error(ErrorKind::Unsupported, "full fine-tuning: '", lin.name,
                "' has a quantized weight, which cannot be trained (train an adapter instead)");
  p.add(lin.name + ".weight", lin.weight);
  if (lin.bias.defined()) p.add(lin.name + ".bias", lin.bias);
}

void register_full_finetune(TrainableParams& params, const LlamaModel& model) {
  params.add("model.embed_tokens.weight", model.embed_tokens());
  for (size_t l = 0; l < model.layers().size(); l++) {
    const LlamaLayer& L = model.layers()[l];
    std::string pre = "model.layers." + std::to_string(l);
    params.add(pre + ".input_layernorm.weight", L.input_norm);
    for (const Linear* lin : {&L.q, &L.k, &L.v, &L.o}) add_linear(params, *lin);
    params.add(pre + ".post_attention_layernorm.weight", L.post_norm);
    for (const Linear* lin : {&L.gate, &L.up, &L.down}) add_linear(params, *lin);
  }
  params.add("model.norm.weight", model.final_norm());
  if (!model.config().tie_word_embeddings) add_linear(params, model.lm_head());
}

void own_weights(LlamaModel& model) {
  auto own = [](Tensor& t) {
    if (t.defined()) t = t.clone();
  };
  auto own_linear = [&](Linear& l) {
    if (!l.quantized()) own(l.weight);
    own(l.bias);
  };
  own(model.mutable_embed_tokens());
  for (LlamaLayer& L : model.mutable_layers()) {
    own(L.input_norm);
    own(L.post_norm);
    for (Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) own_linear(*l);
  }
  own(model.mutable_final_norm());
  if (model.config().tie_word_embeddings)
    model.mutable_lm_head().weight = model.mutable_embed_tokens();
  else
    own_linear(model.mutable_lm_head());
}

}  // namespace qtune
