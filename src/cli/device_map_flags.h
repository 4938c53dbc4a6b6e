// --device-map and --max-gpu-memory for the commands that load a model to run it (generate, perplexity,
// bench): CPU offload as transformers' device_map, modules on the GPU (bf16) or the CPU (f32); the syntax and
// the auto planner are model/device_map.h's.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "core/error.h"
#include "model/device_map.h"
#include "model/llama_model.h"

namespace qtune::cli {

struct DeviceMapFlags {
  std::string map, max_gpu_memory;

  void add(CLI::App* cmd) {
    cmd->add_option(
        "--device-map", map,
        "CPU offload: auto (fill the GPU with the embedding, the layers in order and the LM head, "
        "the rest on the CPU), a list like model.embed_tokens=cuda,model.layers.0-15=cuda,"
        "model.layers.16-31=cpu,model.norm=cpu,lm_head=cpu, or a JSON file of HF's device_map");
    cmd->add_option("--max-gpu-memory", max_gpu_memory,
                    "With --device-map auto: GPU memory for the weights, e.g. 20GiB (default: free memory "
                    "minus a reserve for the KV cache and activations)");
  }

  bool given() const { return !map.empty(); }

  DeviceMapSpec spec() const {
    DeviceMapSpec s;
    if (map.empty()) {
      if (!max_gpu_memory.empty()) throw_error(ErrorKind::Usage, "--max-gpu-memory needs --device-map auto");
      return s;
    }
    s = parse_device_map(map);
    if (!max_gpu_memory.empty()) {
      if (s.kind != DeviceMapSpec::Kind::Auto)
        throw_error(ErrorKind::Usage,
                    "--max-gpu-memory applies to --device-map auto, not to an explicit map");
      s.max_gpu_bytes = parse_memory_size(max_gpu_memory, "--max-gpu-memory");
    }
    return s;
  }
};

// "cuda", "cpu", or "cuda+cpu" for a split model (summaries, JSON).
inline std::string placement_name(const LlamaModel& m) {
  return m.device_map().split() ? "cuda+cpu" : device_name(m.device());
}

// One stderr line saying where the modules went, e.g. "[device map: model.embed_tokens=cuda,... | 8 of 32
// layers on the CPU]".
inline void print_device_map(const LlamaModel& m) {
  const DeviceMap& dm = m.device_map();
  std::fprintf(stderr, "[device map: %s | %d of %d layers on the CPU]\n", dm.describe().c_str(),
               dm.layers_on(Device::CPU), (int)dm.layers.size());
}

}  // namespace qtune::cli
