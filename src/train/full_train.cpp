// FullTraining (see full_train.h).
#include "train/full_train.h"

#include "core/error.h"
#include "io/model_folder.h"
#include "io/safetensors.h"
#include "model/model_writer.h"
#include "ops/elementwise.h"

namespace qtune {

FullTraining::FullTraining(LlamaModel& model, TrainableParams& params) : model_(model) {
  for (const LlamaLayer& L : model.layers())
    for (const Linear* lin : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      if (lin->quantized())
        throw_error(ErrorKind::Usage, "full fine-tuning: ", lin->name,
                    " is quantized (4/8-bit weights cannot train); load the model in 16/32-bit or train "
                    "an adapter");
  own_weights(model);
  const bool tied = model.config().tie_word_embeddings;
  auto add = [&](const std::string& name, Tensor& t) {
    Item it{name, t, &t};
    if (t.device() != Device::CPU || t.dtype() != DType::F32) {
      it.master = Tensor::empty(t.shape(), DType::F32, t.device());
      convert(it.master, t);
    }
    params.add(name, it.master);
    items_.push_back(it);
  };
  add("model.embed_tokens.weight", model.mutable_embed_tokens());
  for (size_t l = 0; l < model.layers().size(); ++l) {
    LlamaLayer& L = model.mutable_layers()[l];
    const std::string pre = "model.layers." + std::to_string(l);
    add(pre + ".input_layernorm.weight", L.input_norm);
    for (Linear* lin : {&L.q, &L.k, &L.v, &L.o}) {
      add(lin->name + ".weight", lin->weight);
      if (lin->bias.defined()) add(lin->name + ".bias", lin->bias);
    }
    add(pre + ".post_attention_layernorm.weight", L.post_norm);
    for (Linear* lin : {&L.gate, &L.up, &L.down}) {
      add(lin->name + ".weight", lin->weight);
      if (lin->bias.defined()) add(lin->name + ".bias", lin->bias);
    }
  }
  add("model.norm.weight", model.mutable_final_norm());
  if (!tied) {
    Linear& head = model.mutable_lm_head();
    add("lm_head.weight", head.weight);
    if (head.bias.defined()) add("lm_head.bias", head.bias);
  }
}

void FullTraining::refresh() {
  for (Item& it : items_)
    if (it.slot->raw() != it.master.raw()) convert(*it.slot, it.master);
  // A tied head reads the embedding: keep it the same tensor.
  if (model_.config().tie_word_embeddings) model_.mutable_lm_head().weight = model_.mutable_embed_tokens();
}

void FullTraining::save(const std::string& dir, const std::string& source_model_dir) const {
  NamedTensors t;
  for (const Item& it : items_) t.emplace_back(it.name, it.master);
  write_model_folder(t, source_model_dir, dir, DType::F32, kDefaultMaxShardBytes, false);
}

void FullTraining::load(const std::string& dir) {
  WeightStore ws = WeightStore::open(dir);
  for (Item& it : items_) {
    Tensor w = ws.get(it.name);
    if (w.shape() != it.master.shape())
      throw_error(ErrorKind::Shape, dir, ": tensor ", it.name, " is ", shape_str(w.shape()), ", the model's is ",
                  shape_str(it.master.shape()));
    Tensor f = w.to_dtype(DType::F32);
    it.master.copy_from(f);
  }
  refresh();
}

}  // namespace qtune
