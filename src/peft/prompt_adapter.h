// PromptAdapter: one prompt-style adapter on a LlamaModel (a PeftAdapter, peft_adapter.h: no merging), loaded
// by adapter_config.json's peft_type:
// PROMPT_TUNING, P_TUNING, PREFIX_TUNING (prompt_learning.h: virtual tokens, which attach() sets on the
// model so that generate() puts them ahead of every prompt) or ADAPTION_PROMPT (adaption_prompt.h: gated
// prompts in the top layers' attention). Attached on load.
//
//   if (is_prompt_adapter_folder(dir)) {
//     std::unique_ptr<PromptAdapter> a = load_prompt_adapter(model, dir);   // generate() now uses it
//     ...;  a->detach();                                                     // the base model again
//   }
#pragma once
#include <memory>
#include <string>

#include "model/llama_model.h"
#include "model/virtual_tokens.h"
#include "peft/adaption_prompt.h"
#include "peft/peft_adapter.h"
#include "peft/prompt_learning.h"

namespace qtune {

class PromptAdapter : public PeftAdapter {
 public:
  // PROMPT_TUNING, P_TUNING, PREFIX_TUNING, ADAPTION_PROMPT.
  static bool handles(const std::string& peft_type);

  PromptAdapter(LlamaModel& model, PromptLearningModel pl);
  PromptAdapter(LlamaModel& model, AdaptionPromptModel ap);
  ~PromptAdapter() override;

  const char* peft_type() const override;
  void attach() override;
  void detach() override;
  void save(const std::string& dir) const override;
  // The virtual tokens ahead of each prompt (null for ADAPTION_PROMPT).
  const VirtualTokens* virtual_tokens() const { return vt_.get(); }
  PromptLearningModel* prompt_learning() { return pl_.get(); }
  AdaptionPromptModel* adaption_prompt() { return ap_.get(); }

 private:
  LlamaModel& model_;
  std::unique_ptr<PromptLearningModel> pl_;
  std::unique_ptr<AdaptionPromptModel> ap_;
  std::shared_ptr<const VirtualTokens> vt_;
};

// Whether dir/adapter_config.json names a peft_type of handles()'s (false when it cannot be read: the
// caller's loader then reports why).
bool is_prompt_adapter_folder(const std::string& dir);

// Loads dir by its peft_type (one of handles()'s) and attaches it. Another peft_type throws
// ErrorKind::Unsupported naming adapter_config.json; other errors name the file at fault.
std::unique_ptr<PromptAdapter> load_prompt_adapter(LlamaModel& model, const std::string& dir);

}  // namespace qtune
