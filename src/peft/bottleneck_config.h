// BottleneckConfig: the classic bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020) in qtune's
// own adapter folder format (PEFT has no such tuner; docs/adapters.md documents the files):
//   adapter_config.json   {"peft_type": "BOTTLENECK", "adapter_style": "houlsby" | "pfeiffer",
//                          "target_modules": [...], "bottleneck_size": r, "non_linearity": "relu", ...}
//   adapter_model.safetensors   "base_model.model.<module>.adapter_down.weight" [r, C] / ".bias" [r],
//                               "...adapter_up.weight" [C, r] / ".bias" [C]
// An adapter sits on the output of a sub-layer's last projection, before the residual add:
//   y = h + up(act(down(h))),  h = o_proj(...) or down_proj(...)
// houlsby: after attention (o_proj) and after the MLP (down_proj); pfeiffer: after the MLP only.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "peft/adapter_ops.h"

namespace qtune {

struct BottleneckConfig {
  std::string adapter_style = "houlsby";    // "houlsby" | "pfeiffer"
  std::vector<std::string> target_modules;  // module-name suffixes; empty: from adapter_style
  int64_t bottleneck_size = 64;             // r, the down-projection's width
  AdapterAct non_linearity = AdapterAct::Relu;
  int64_t hidden_size = 0;  // of the base model (written; checked on load; 0: unknown)
  std::string base_model_name_or_path;
  std::string task_type = "CAUSAL_LM";

  // Fills empty target_modules from the style (houlsby: o_proj, down_proj; pfeiffer: down_proj).
  // Throws ErrorKind::Config (prefixed by context) for an unknown style or bottleneck_size <= 0.
  void apply_defaults(const std::string& context = "");
};

// adapter_config.json. read throws ErrorKind::Format/Unsupported naming the file and field; write is atomic.
BottleneckConfig read_bottleneck_config(const std::string& path);
void write_bottleneck_config(const std::string& path, const BottleneckConfig& cfg);

}  // namespace qtune
