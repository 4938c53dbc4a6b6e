// LoraModel: LoRA adapters attached to a LlamaModel's Linears, PEFT style, and PEFT adapter folders
// (adapter_config.json + adapter_model.safetensors) in both directions.
//
//   LlamaModel base = LlamaModel::load(dir);
//   LoraConfig cfg; cfg.r = 16; cfg.lora_alpha = 32; set_target_modules(cfg, "q_proj,v_proj");
//   LoraModel lora = LoraModel::create(base, cfg, /*seed=*/0);   // PEFT init: A Kaiming-uniform, B = 0
//   ... train lora.trainable() ..., lora.refresh();
//   lora.save("out");                                             // PeftModel.from_pretrained reads it
//   LoraModel again = LoraModel::load(base2, "out");              // or a folder PEFT wrote
//
// Saved keys are PEFT's: "base_model.model.<module>.lora_A.weight" / "lora_B.weight" /
// "lora_magnitude_vector" (DoRA); trained biases "<module>.base_layer.bias" for LoRA-wrapped modules and
// "<module>.bias" otherwise; modules_to_save "<module>.weight" (lm_head, model.embed_tokens).
// The LoraModel keeps a pointer to the LlamaModel: the model must outlive it (or call detach()).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/llama_model.h"
#include "peft/lora_config.h"
#include "peft/lora_layer.h"

namespace qtune {

// The model's linear modules by HF name, in model order ("model.layers.0.self_attn.q_proj", ...,
// "lm_head").
std::vector<std::pair<std::string, Linear*>> linear_modules(LlamaModel& model);

// Names of the modules a config targets (PEFT's matching: list entries match the name or a ".suffix";
// a string is a full-match regex; "all-linear" is every linear but lm_head; modules_to_save and
// exclude_modules are never targeted). Throws ErrorKind::Config listing the model's linear module names
// when nothing matches; `context` prefixes the message.
std::vector<std::string> resolve_lora_targets(const LoraConfig& cfg,
                                              const std::vector<std::string>& linear_names,
                                              const std::string& context = "");

struct NamedTensor {
  std::string name;  // PEFT's saved key
  Tensor tensor;     // F32 CPU
};

class LoraModel {
 public:
  // Fresh adapters with PEFT's init (seeded), attached to the model's matching Linears.
  static LoraModel create(LlamaModel& model, const LoraConfig& cfg, uint64_t seed);
  // Reads a PEFT folder and attaches it. Errors name the file: adapter_config.json (unknown peft_type,
  // bad fields), adapter_model.safetensors (missing/unexpected tensors, shapes that do not fit this
  // model, e.g. an adapter trained on a base with another hidden size).
  static LoraModel load(LlamaModel& model, const std::string& dir);

  LoraModel(LoraModel&&) = default;
  LoraModel& operator=(LoraModel&&) = default;
  ~LoraModel();

  // Writes dir/adapter_config.json and dir/adapter_model.safetensors (creating dir).
  void save(const std::string& dir) const;
  // Every trained tensor under its saved key (A, B, magnitudes, trained biases, modules_to_save).
  std::vector<NamedTensor> trainable() const;
  // Re-prepares the forward copies after the trainable tensors changed (and pushes biases /
  // modules_to_save weights into the model).
  void refresh();
  // Removes the adapters from the model (restoring its original biases and head/embedding weights).
  void detach();
  // Folds every LoRA/DoRA layer into its base weight, as PEFT's merge_and_unload: W += scale·B·A (DoRA:
  // W = m / ‖W + scale·B·A‖_row ⊙ (W + scale·B·A)); trained biases and modules_to_save stay in the model.
  // The model then runs without adapters (for `qtune merge`); this LoraModel keeps only those extras.
  // Dense F32 CPU weights only (throws ErrorKind::Unsupported for quantized or CUDA weights).
  void merge();

  // The trained biases and modules_to_save tensors: the model parameter each replaces (its HF name, e.g.
  // "model.layers.0.self_attn.q_proj.bias", "lm_head.weight"), the F32 CPU master that is saved and the
  // model's slot that refresh() fills from it (on a CPU model the slot shares the master's storage).
  struct ExtraRef {
    std::string param_name;
    Tensor master;
    Tensor* slot;
  };
  std::vector<ExtraRef> extras() const;

  const LoraConfig& config() const { return cfg_; }
  const std::vector<std::string>& targets() const { return targets_; }
  const std::vector<std::shared_ptr<LoraLayer>>& layers() const { return layers_; }

 private:
  LoraModel() = default;
  void attach_extras(bool from_file);
  Linear* find_linear(const std::string& module) const;

  LlamaModel* model_ = nullptr;
  LoraConfig cfg_;
  std::vector<std::string> targets_;
  std::vector<std::shared_ptr<LoraLayer>> layers_;
  struct Extra {
    std::string key;  // saved key (without the base_model.model. prefix)
    Tensor master;    // F32 CPU, trained
    Tensor original;  // the model's tensor before (restored by detach)
    Tensor* slot;     // where the model holds it
  };
  std::vector<Extra> extras_;
};

}  // namespace qtune
