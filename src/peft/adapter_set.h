// AdapterSet: several adapters on one base model, as PEFT's PeftModel keeps them: load many under names
// (any kind: LoRA, IA3, bottleneck), make one active per request, disable all (the base model), merge the
// active LoRA / IA3 adapter into the 16-bit (or f32) base weights and unmerge it, and combine LoRA adapters
// by weights into a new one (add_weighted_adapter, "linear" and "cat": lora_combine.h).
//
//   AdapterSet set(model);
//   set.load("chat", "adapters/chat");  set.load("code", "adapters/code");   // loaded inactive
//   set.set_active("code");  ... model.forward(...) ...                       // code's function
//   set.disable();           ... base model ...
//   set.add_weighted_adapter({"chat", "code"}, {0.7, 0.3}, "mix", "cat");  set.set_active("mix");
//   set.merge();  ...  set.unmerge();
// The model must outlive the set. One adapter is active at a time (PEFT's multi-active mixing is not here).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/llama_model.h"
#include "peft/peft_adapter.h"

namespace qtune {

class AdapterSet {
 public:
  explicit AdapterSet(LlamaModel& model) : model_(model) {}
  ~AdapterSet();
  AdapterSet(const AdapterSet&) = delete;
  AdapterSet& operator=(const AdapterSet&) = delete;

  // Loads an adapter folder by its peft_type under name (inactive). Throws ErrorKind::Usage for a name
  // already taken; loading errors name the folder's files.
  void load(const std::string& name, const std::string& dir);
  // Takes an adapter made elsewhere (it is detached from the model; inactive).
  void add(const std::string& name, std::unique_ptr<PeftAdapter> adapter);

  // Makes name the one adapter in effect ("" = none). An unknown name throws ErrorKind::Usage listing the
  // loaded ones. The previously active adapter is unmerged (if merged) and detached.
  void set_active(const std::string& name);
  void disable() { set_active(""); }
  const std::string& active() const { return active_; }

  // Folds the active adapter into the base weights (LoRA: W += scale·B·A; IA3: W ⊙ l) / takes it out again.
  // Throws ErrorKind::Usage with no active adapter, ErrorKind::Unsupported for kinds that cannot merge
  // (bottleneck, DoRA) or quantized weights.
  void merge();
  void unmerge();
  bool merged() const;

  // A new LoRA adapter new_name = the weighted combination of LoRA adapters (PEFT's add_weighted_adapter with
  // combination_type "linear" or "cat"); inactive. The active adapter stays active.
  void add_weighted_adapter(const std::vector<std::string>& adapters, const std::vector<double>& weights,
                            const std::string& new_name, const std::string& combination_type);

  std::vector<std::string> names() const;
  PeftAdapter& get(const std::string& name);  // throws ErrorKind::Usage listing the names

 private:
  std::string known() const;
  LlamaModel& model_;
  std::vector<std::pair<std::string, std::unique_ptr<PeftAdapter>>> adapters_;
  std::string active_;
};

}  // namespace qtune
