// Ia3Config: PEFT's IA3Config with PEFT's field names, and adapter_config.json read/write. IA3 learns one
// vector per targeted Linear: modules in feedforward_modules scale their INPUT (W·(x ⊙ l), l [1, I]), the
// others their OUTPUT ((x·Wᵀ + b) ⊙ l, l [O, 1]); vectors start at ones. Empty target/feed-forward lists
// take PEFT's per-architecture defaults (llama, mistral: k_proj, v_proj, down_proj; qwen2: q_proj, v_proj,
// down_proj; down_proj feed-forward). Written files carry the fields PEFT 0.21 writes.
#pragma once
#include <string>
#include <vector>

#include "peft/lora_config.h"

namespace qtune {

struct Ia3Config {
  // Module-name suffixes (PEFT: name == t or ends with "." + t), or a full-match regex, or "all-linear".
  std::vector<std::string> target_modules;
  std::string target_regex;
  bool all_linear = false;
  // Plain suffixes (PEFT: name.endswith(f)) or a full-match regex.
  std::vector<std::string> feedforward_modules;
  std::string feedforward_regex;
  std::vector<std::string> exclude_modules;
  bool init_ia3_weights = true;  // false: PEFT's randn init (discouraged; never used by qtune's create)
  std::string base_model_name_or_path;
  std::string task_type = "CAUSAL_LM";

  // Fills empty target/feed-forward settings with PEFT's defaults for model_type ("llama" ...); throws
  // ErrorKind::Config naming context when the type has none. Checks feed-forward ⊆ targets for lists.
  void apply_defaults(const std::string& model_type, const std::string& context = "");
  // Whether a targeted module is feed-forward (its input is scaled).
  bool is_feedforward(const std::string& module) const;
  // The LoRA-style targeting view (shared matching code: resolve_lora_targets).
  LoraConfig targeting() const;
};

// Parses "k_proj,v_proj" / "all-linear" into cfg.target_modules; and "down_proj" into feedforward_modules.
void set_ia3_modules(Ia3Config& cfg, const std::string& targets, const std::string& feedforward);

// adapter_config.json. read throws ErrorKind::Format/Unsupported naming the file and field; write is atomic
// and lists the targets as given (or resolved module names for "all-linear").
Ia3Config read_ia3_config(const std::string& path);
void write_ia3_config(const std::string& path, const Ia3Config& cfg,
                      const std::vector<std::string>& resolved_targets);

}  // namespace qtune
