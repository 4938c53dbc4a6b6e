// The registry of trainable parameters and their gradients. Whatever trains registers here under its
// Hugging Face / PEFT name: full fine-tuning registers the model's own weights, and later LoRA A/B
// matrices, IA3 vectors, DoRA magnitudes or prompt embeddings register theirs. The backward code asks
// grad(name) for each parameter it touches: nullptr means frozen (only d(input) is computed), otherwise
// it accumulates into the returned F32 gradient. The optimizer walks entries().
//
//   TrainableParams p;
//   register_full_finetune(p, model);                 // every weight of a dense model
//   Tensor* g = p.grad("model.layers.0.mlp.up_proj.weight");   // [F, C] or nullptr when frozen
#pragma once
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace qtune {

class LlamaModel;

class TrainableParams {
 public:
  struct Entry {
    std::string name;  // e.g. "model.layers.0.self_attn.q_proj.weight"
    Tensor param;      // the value (shares the owner's storage)
    Tensor grad;       // F32, same shape, on the param's device
  };

  // Registers param under name with a zeroed F32 gradient; returns that gradient. Registering a name twice
  // throws ErrorKind::Usage (tied weights register once, and both users ask for the same name).
  Tensor& add(const std::string& name, const Tensor& param);
  // The gradient of name, or nullptr when name is not trainable.
  Tensor* grad(const std::string& name);
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  // The entry of name; throws ErrorKind::Usage naming it when absent.
  const Entry& at(const std::string& name) const;
  void zero_grads();
  const std::deque<Entry>& entries() const { return entries_; }  // in registration order
  size_t size() const { return entries_.size(); }
  int64_t numel() const;  // trainable elements

 private:
  std::deque<Entry> entries_;  // a deque: grad pointers stay valid as entries are added
  std::map<std::string, size_t> index_;
};

// Full fine-tuning: registers every tensor of a dense model under its HF name (embeddings, every
// Linear weight and bias, the norms, lm_head unless tied). Throws ErrorKind::Unsupported for a quantized
// Linear (its weight cannot be trained; that is what adapters are for).
// The dense weights of a loaded model may be read-only views of the mmap'd safetensors file: an optimizer
// updating them in place would fault. Call own_weights first: every dense tensor (embedding, norms,
// Linear weights and biases, lm_head; tied weights stay shared) is replaced by a private copy. Register
// afterwards (registered params share storage with the model's tensors at registration time).
void register_full_finetune(TrainableParams& params, const LlamaModel& model);
void own_weights(LlamaModel& model);

}  // namespace qtune
