// CPU offload as transformers/accelerate's device_map does it: which modules of a Llama-family model live
// and run on the GPU (bf16 weights and activations) and which on the CPU (f32). The granularity is the
// module list HF uses for these models: the embedding (model.embed_tokens), each decoder layer
// (model.layers.N), the final norm (model.norm) and the LM head (lm_head). LlamaModel::load places each
// module's weights and KV cache on its device; the forward moves the residual stream (bf16 over the bus,
// f32 on the CPU side) where consecutive modules sit on different devices.
//
//   --device-map auto [--max-gpu-memory 20GiB]        fill the GPU in module order, spill the rest to the CPU
//   --device-map
//   "model.embed_tokens=cuda,model.layers.0-15=cuda,model.layers.16-31=cpu,model.norm=cpu,lm_head=cpu"
//   --device-map map.json                             HF's dict: {"model.layers.3": 0, "lm_head": "cpu", ...}
//
// Quantized loading (--load-in-4bit / --load-in-8bit) with a split map: GPU modules are quantized as usual;
// CPU modules of a 16/32-bit checkpoint stay dense f32, as transformers does with
// llm_int8_enable_fp32_cpu_offload (the CPU's dense f32 GEMM is faster than dequantizing every product);
// a checkpoint stored quantized keeps its stored 4/8-bit weights on the CPU too (there is no f32 to keep).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace qtune {

struct ModelConfig;  // io/hf_config.h
struct LoadOptions;  // model/load_options.h

// What the user asked for, before the model's layer count is known.
struct DeviceMapSpec {
  enum class Kind { None, Auto, Explicit };
  Kind kind = Kind::None;
  // Explicit: (module key, device) in the order given. Keys: "" (everything), "model" (embedding, layers,
  // final norm), "model.embed_tokens", "model.layers" (all), "model.layers.N", "model.layers.A-B",
  // "model.norm", "lm_head"; "model.rotary_emb" (no weights) is accepted and ignored.
  std::vector<std::pair<std::string, Device>> entries;
  std::string source = "--device-map";  // named in errors: the flag, or the JSON file's path
  int64_t max_gpu_bytes = 0;            // auto: GPU bytes for weights (0: free memory minus a reserve)

  bool enabled() const { return kind != Kind::None; }
};

// Parses --device-map's value: "auto"; a comma list "module=device,..."; JSON object text ("{...}"); or the
// path of a JSON file holding HF's device_map dict. Devices: cuda, cuda:0, gpu, 0 (an integer in JSON) are
// the GPU; cpu the CPU. Throws ErrorKind::Usage naming the entry: a device qtune cannot use (disk, meta,
// cuda:1), an entry without '=', an empty module name, a JSON value that is not a device.
DeviceMapSpec parse_device_map(const std::string& text);
// "20GiB", "1.5GiB", "512MiB", "20GB", "1073741824" → bytes (KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB
// powers of 1000, any letter case, as accelerate reads max_memory). Throws ErrorKind::Usage naming `what`.
int64_t parse_memory_size(const std::string& text, const std::string& what);

// Where each module of one model is placed.
struct DeviceMap {
  Device embed = Device::CPU, norm = Device::CPU, lm_head = Device::CPU;
  std::vector<Device> layers;

  static DeviceMap uniform(int num_layers, Device d);
  bool split() const;      // some modules on the CPU and some on the GPU
  Device primary() const;  // CUDA when any module is on the GPU, else CPU
  int layers_on(Device d) const;
  // "model.embed_tokens=cuda,model.layers.0-15=cuda,model.layers.16-31=cpu,model.norm=cpu,lm_head=cpu"
  // (consecutive layers on one device merged into a range; parse_device_map reads it back).
  std::string describe() const;
};

// An explicit spec against a model of num_layers layers. Throws ErrorKind::Usage for an unknown module name
// (listing the valid ones), a key finer than a decoder layer, a layer index or range outside
// [0, num_layers), a range A-B with A > B, two entries covering the same module (overlap), or modules no
// entry covers (listed).
DeviceMap resolve_device_map(const DeviceMapSpec& spec, int num_layers);

// The bytes each module's weights take on the GPU (bf16, or the quantized storage of opts).
struct ModuleSizes {
  int64_t embed = 0, norm = 0, lm_head = 0;
  std::vector<int64_t> layers;
  bool lm_head_tied = false;  // the LM head shares the embedding: free when the embedding is on the GPU
};
ModuleSizes module_gpu_sizes(const ModelConfig& cfg, const LoadOptions& opts);

// auto: modules in order (embedding, layers 0.., final norm, LM head) go to the GPU while the running total
// stays within budget bytes; the first that does not fit and every module after it go to the CPU (so the
// stream crosses the bus at most once per forward, as accelerate's sequential fill does).
DeviceMap plan_auto_device_map(const ModuleSizes& sizes, int64_t budget);

// The default auto budget: free GPU memory (plus what qtune's allocator caches) minus a reserve for the KV
// cache of min(context, 4096) tokens at batch 1 and 1 GiB of activations and workspaces. 0 without a GPU.
int64_t default_gpu_budget(const ModelConfig& cfg);

// The placement LlamaModel::load uses: uniform(device) without a spec; an explicit spec resolved (a GPU
// entry without a usable GPU throws ErrorKind::Unsupported); auto planned against max_gpu_bytes or the
// default budget (everything on the CPU when no GPU is usable, as accelerate does).
DeviceMap place_modules(const ModelConfig& cfg, const LoadOptions& opts, Device device);

}  // namespace qtune
