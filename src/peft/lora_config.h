// LoraConfig: PEFT's LoRA configuration with PEFT's field names, and adapter_config.json read/write.
// Written files carry every field PEFT 0.21 writes, with PEFT's defaults, so PeftModel.from_pretrained
// reads them as its own; read files accept what PEFT writes (target_modules as a list, a regex string or
// "all-linear") and reject what qtune cannot honour (another peft_type, fan_in_fan_out, layers_to_transform,
// lora_bias ...) with an error naming the file and the field.
#pragma once
#include <map>
#include <string>
#include <vector>

namespace qtune {

enum class LoraBias { None, All, LoraOnly };  // "none" | "all" | "lora_only"
const char* lora_bias_name(LoraBias b);

struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  // Module-name suffixes (PEFT: name == t or name ends with "." + t); or one regex string (full match)
  // in target_regex; or all_linear (every linear layer but the output head).
  std::vector<std::string> target_modules;
  std::string target_regex;
  bool all_linear = false;
  std::vector<std::string> exclude_modules;
  LoraBias bias = LoraBias::None;
  bool use_rslora = false;
  bool use_dora = false;
  std::vector<std::string> modules_to_save;  // e.g. {"lm_head"}: fully trained copies, saved whole
  bool fan_in_fan_out = false;
  std::string init_lora_weights = "true";       // "true" (Kaiming-uniform A, zero B), "false", "gaussian"
  std::map<std::string, int64_t> rank_pattern;  // module-name pattern → r
  std::map<std::string, double> alpha_pattern;  // module-name pattern → lora_alpha
  std::string base_model_name_or_path;
  std::string task_type = "CAUSAL_LM";
  bool inference_mode = true;  // as saved by PEFT

  // scale = alpha / r, or alpha / sqrt(r) with rsLoRA, for a module (rank/alpha patterns applied).
  int64_t rank_for(const std::string& module) const;
  double alpha_for(const std::string& module) const;
  double scale_for(const std::string& module) const;
  // Throws ErrorKind::Config (prefixed by `context`) on r <= 0, alpha <= 0, dropout outside [0, 1), an
  // unknown init, or no targets.
  void validate(const std::string& context) const;
};

// Parses "q_proj,v_proj" / "all-linear" (the CLI's --target-modules form) into cfg.
void set_target_modules(LoraConfig& cfg, const std::string& comma_list);
// "a, b,,c" -> {"a", "b", "c"}: items trimmed of spaces, empty ones dropped (the CLI's module lists).
std::vector<std::string> split_comma_list(const std::string& comma_list);

// adapter_config.json. read throws ErrorKind::Format/Config naming the file and field; write is atomic.
LoraConfig read_lora_config(const std::string& path);
void write_lora_config(const std::string& path, const LoraConfig& cfg,
                       const std::vector<std::string>& resolved_targets);

}  // namespace qtune
