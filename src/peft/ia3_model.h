// Ia3Model: IA3 adapters ((IA)³, PEFT's IA3 tuner) attached to a LlamaModel's Linears, and PEFT adapter
// folders in both directions. Each targeted Linear gets an Ia3Layer with one learned vector l:
//   feed-forward modules   y = W·(x ⊙ l) + b      l [1, I]   (Linear's transform_input hook)
//   the others             y = (x·Wᵀ + b) ⊙ l     l [O, 1]   (after the base product, bias included)
// exactly as PEFT's IA3 Linear computes it (the product in f32, rounded once to the activation dtype).
//
//   Ia3Config cfg;  cfg.apply_defaults("llama");                 // k_proj, v_proj, down_proj (feed-forward)
//   Ia3Model ia3 = Ia3Model::create(model, cfg);                  // vectors = 1: the base function
//   ... train ia3.trainable() (train/ia3_train.h) ...; ia3.save("out");   // PeftModel.from_pretrained reads
//   it Ia3Model again = Ia3Model::load(model2, "out");              // or a folder PEFT wrote again.merge();
//   ...  again.unmerge();                         // W ⊙ l folded into the base and back
//
// Saved keys are PEFT's: "base_model.model.<module>.ia3_l". The model must outlive the Ia3Model.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/linear.h"
#include "model/llama_model.h"
#include "peft/ia3_config.h"
#include "peft/lora_model.h"
#include "peft/peft_adapter.h"

namespace qtune {

struct Ia3Layer : LinearAdapter {
  std::string module;  // "model.layers.0.mlp.down_proj"
  bool feedforward = false;
  Tensor l;      // F32 CPU, PEFT's shape: [1, I] feed-forward, [O, 1] otherwise (the master)
  Tensor l_dev;  // F32 on the model's device: l itself on the CPU, a copy on CUDA (refresh)

  void refresh(Device device);
  void apply(Tensor& out, const Tensor& x) const override;  // out ⊙= l (not feed-forward)
  bool transforms_input() const override { return feedforward; }
  Tensor transform_input(const Tensor& x) const override;  // x ⊙ l [N, I], x's dtype
};

class Ia3Model : public PeftAdapter {
 public:
  // Fresh vectors of ones (PEFT's init_ia3_weights), attached. Empty targets take PEFT's defaults for the
  // model's type. Throws ErrorKind::Config when the targets match nothing (listing the modules).
  static Ia3Model create(LlamaModel& model, Ia3Config cfg);
  // Reads a PEFT IA3 folder and attaches it. Errors name the file: adapter_config.json (another peft_type,
  // bad fields, targets matching nothing), adapter_model.safetensors (missing / unexpected tensors, shapes
  // that do not fit this model, e.g. another hidden size).
  static Ia3Model load(LlamaModel& model, const std::string& dir);

  const char* peft_type() const override { return "IA3"; }
  void attach() override;  // no-op while merged
  void detach() override;  // unmerges first when merged
  void save(const std::string& dir) const override;
  // PEFT's IA3 merge: W[o, :] *= l[o] and b[o] *= l[o] (output vectors), W[:, i] *= l[i] (feed-forward),
  // in f32, rounded to the weight's dtype (F32 CPU or BF16 CUDA; quantized weights are refused).
  // unmerge divides by l + 1e-8, as PEFT does.
  bool can_merge() const override { return true; }
  void merge() override;
  void unmerge() override;
  bool merged() const override { return merged_; }

  // Every vector under its saved key (the masters, F32 CPU).
  std::vector<NamedTensor> trainable() const;
  // After the masters changed on the CPU: new device copies, layers (re)attached.
  void refresh();

  const Ia3Config& config() const { return cfg_; }
  const std::vector<std::string>& targets() const { return targets_; }
  const std::vector<std::shared_ptr<Ia3Layer>>& layers() const { return layers_; }
  LlamaModel& model() const { return *model_; }

 private:
  Ia3Model() = default;
  Linear* find_linear(const std::string& module) const;
  void scale_weights(bool divide);

  LlamaModel* model_ = nullptr;
  Ia3Config cfg_;
  std::vector<std::string> targets_;
  std::vector<std::shared_ptr<Ia3Layer>> layers_;
  bool merged_ = false;
};

}  // namespace qtune
