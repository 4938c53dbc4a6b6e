// Full fine-tuning: every tensor of a dense model trains (embeddings, Linear weights and biases, norms,
// lm_head unless tied), registered under its HF name in a TrainableParams. On the CPU the model's own F32
// tensors are the parameters (made private copies first: loaded weights may be read-only mmap views); on a
// GPU model the parameters are F32 masters on the device and refresh() rounds them into the model's BF16
// tensors after each optimizer step (the forward and backward read those).
//
//   FullTraining ft(model, params);   ... backward, optimizer step on params ...;  ft.refresh();
//   ft.save(dir, source_model_dir);   // a Hugging Face model folder, F32 (what resume reads back exactly)
//   ft.load(dir);                     // the weights of such a folder back into the masters and the model
#pragma once
#include <string>
#include <vector>

#include "model/llama_model.h"
#include "train/trainable.h"

namespace qtune {

class FullTraining {
 public:
  // Throws ErrorKind::Usage for a quantized model (its 4/8-bit weights cannot train; use an adapter).
  FullTraining(LlamaModel& model, TrainableParams& params);
  void refresh();
  void save(const std::string& dir, const std::string& source_model_dir) const;
  void load(const std::string& dir);
  int64_t tensors() const { return (int64_t)items_.size(); }

 private:
  struct Item {
    std::string name;
    Tensor master;  // F32, the registered parameter
    Tensor* slot;   // the model's tensor (the master itself on the CPU)
  };
  LlamaModel& model_;
  std::vector<Item> items_;
};

}  // namespace qtune
