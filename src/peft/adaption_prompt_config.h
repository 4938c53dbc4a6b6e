// AdaptionPromptConfig: PEFT's AdaptionPromptConfig (LLaMA-Adapter, peft_type ADAPTION_PROMPT) with PEFT's
// field names, and its adapter_config.json read/write (in adaption_prompt.cpp). The trainer's arguments hold
// one (--adapter-len, --adapter-layers), so it lives apart from the model code of adaption_prompt.h.
#pragma once
#include <cstdint>
#include <string>

namespace qtune {

struct AdaptionPromptConfig {
  int64_t adapter_len = 10;    // prompt rows per adapted layer
  int64_t adapter_layers = 1;  // the top adapter_layers layers are adapted
  std::string target_modules = "self_attn";
  std::string base_model_name_or_path;
  std::string task_type = "CAUSAL_LM";
};

// adapter_config.json; read throws ErrorKind::Format / Unsupported naming the file and field.
AdaptionPromptConfig read_adaption_prompt_config(const std::string& path);
void write_adaption_prompt_config(const std::string& path, const AdaptionPromptConfig& cfg);

}  // namespace qtune
