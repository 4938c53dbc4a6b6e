// The Llama-family causal LM (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM): weights loaded by
// their HF names from a model folder, and a forward pass over a KV cache that returns F32 logits.
// Device-agnostic: the ops dispatch on the tensors' device, picked once at load (CPU: f32 weights,
// zero-copy from the mmap when the file is f32; CUDA: bf16 weights and activations, f32 logits).
//
//   LlamaModel m = LlamaModel::load("path/to/model", Device::CPU);
//   KVCache cache = m.make_cache(1, 512);
//   Tensor logits = m.forward(ids, cache, 0);            // ids I32 [B, T] → logits F32 [B, T, V]
//   Tensor next = m.forward(ids2, cache, T, true);       // [B, 1, V]: only the last position
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "io/hf_config.h"
#include "model/device_map.h"
#include "model/kv_cache.h"
#include "model/linear.h"
#include "model/load_options.h"

namespace qtune {

class WeightStore;
struct LlamaLayer;
struct VirtualTokens;  // model/virtual_tokens.h

// An add-on to one layer's attention (peft/ LLaMA-Adapter's gated adaption prompts): called after o_proj
// with the layer's RoPE-rotated queries, it adds its own output into the attention block's output.
class AttentionAdapter {
 public:
  virtual ~AttentionAdapter() = default;
  // proj [N, C]: o_proj's output, += here; q [B, T, Hq, D]: the rotated queries (N = B·T).
  virtual void forward(Tensor& proj, const Tensor& q, const LlamaLayer& layer) const = 0;
};

struct LlamaLayer {
  Tensor input_norm;      // [C]  input_layernorm.weight
  Tensor post_norm;       // [C]  post_attention_layernorm.weight
  Linear q, k, v, o;      // [Hq·D, C], [Hkv·D, C], [Hkv·D, C], [C, Hq·D]
  Linear gate, up, down;  // [F, C], [F, C], [C, F]
  // Where the layer's weights and KV cache live and its ops run (all the model's device unless a device
  // map splits the model: device_map.h).
  Device device = Device::CPU;
  // An add-on after o_proj (LLaMA-Adapter); null: plain attention.
  std::shared_ptr<const AttentionAdapter> attn_adapter;
};

class LlamaModel {
 public:
  // Reads dir/config.json and the weights (model.safetensors or sharded). Throws ErrorKind::Config for a
  // bad config (unknown architecture ...), ErrorKind::Format listing every missing tensor, or naming
  // each tensor whose shape is wrong (expected vs got). Tensors the model does not use are ignored
  // (listed by unused_tensors()).
  // opts quantize the decoder Linear weights while loading (load_options.h); a folder with a
  // quantization_config in config.json (bitsandbytes layout) loads quantized without options.
  // opts.device_map splits the modules between the GPU and the CPU (device_map.h); device is then unused.
  static LlamaModel load(const std::string& dir, Device device = Device::CPU, const LoadOptions& opts = {});
  // The same from an already parsed config and an opened store (for tests and tools); opts as resolved
  // (resolve_load_options in quant_load.h).
  static LlamaModel from_store(const ModelConfig& cfg, const WeightStore& store, Device device,
                               const LoadOptions& opts = {});

  const ModelConfig& config() const { return cfg_; }
  Device device() const { return device_; }
  DType activation_dtype() const { return act_dtype_; }  // F32 on the CPU, BF16 on CUDA
  // Where each module is (device_map.h). A split map: device() is CUDA, and the embedding, each layer
  // (LlamaLayer::device), the final norm and the LM head sit on the CPU (f32) or the GPU (bf16).
  const DeviceMap& device_map() const { return map_; }
  const std::vector<std::string>& unused_tensors() const { return unused_; }
  const std::string& source() const { return source_; }

  // A cache for `batch` sequences of up to max_seq tokens.
  KVCache make_cache(int64_t batch, int64_t max_seq) const;

  // ids I32 [B, T] (any device): the tokens at positions start_pos .. start_pos+T-1 of each sequence;
  // cache rows [0, start_pos) must hold the earlier tokens. Writes this call's K/V rows into the cache.
  // Returns F32 logits [B, T, V] on the model's device (a split model: the LM head's), or [B, 1, V] (the
  // last position) when last_only.
  Tensor forward(const Tensor& ids, KVCache& cache, int64_t start_pos, bool last_only = false) const;
  // Whole sequences from position 0 with a temporary cache: logits F32 [B, T, V].
  Tensor forward(const Tensor& ids) const;
  // The same from input embeddings instead of ids: x [B, T, C] F32 or the activation dtype, any device
  // (prompt tuning feeds its virtual tokens' embeddings ahead of the prompt's this way).
  Tensor forward_embeds(const Tensor& x, KVCache& cache, int64_t start_pos, bool last_only = false) const;

  // Parts, for tools and later training code.
  const Tensor& embed_tokens() const { return embed_; }  // [V, C]
  const Linear& lm_head() const { return lm_head_; }     // [V, C] (shares embed_tokens when tied)
  const std::vector<LlamaLayer>& layers() const { return layers_; }
  const Tensor& final_norm() const { return norm_; }
  const Tensor& inv_freq() const { return inv_freq_; }  // F32 [D/2] on the device
  // Mutable parts, for adapters (peft/) and training: attach LinearAdapters, replace biases or the
  // lm_head / embedding weights (modules_to_save). Shapes and device must stay as loaded.
  std::vector<LlamaLayer>& mutable_layers() { return layers_; }
  Linear& mutable_lm_head() { return lm_head_; }
  Tensor& mutable_embed_tokens() { return embed_; }
  Tensor& mutable_final_norm() { return norm_; }
  // Virtual tokens an attached prompt-learning adapter (peft/prompt_adapter.h) puts ahead of every prompt:
  // generate() uses them; forward() does not (its callers place cache rows and positions themselves).
  void set_virtual_tokens(std::shared_ptr<const VirtualTokens> vt) { virtual_tokens_ = std::move(vt); }
  const VirtualTokens* virtual_tokens() const { return virtual_tokens_.get(); }

 private:
  // Checks the positions against the cache and the window; runs the layers over the residual stream x
  // [B·T, C] (activation dtype, consumed) and returns the logits.
  Tensor forward_hidden(Tensor& x, int64_t B, int64_t T, KVCache& cache, int64_t start_pos,
                        bool last_only) const;

  ModelConfig cfg_;
  Device device_ = Device::CPU;
  DType act_dtype_ = DType::F32;
  std::string source_;
  DeviceMap map_;
  Tensor embed_, norm_, inv_freq_;
  Linear lm_head_;
  std::vector<LlamaLayer> layers_;
  std::vector<std::string> unused_;
  std::shared_ptr<const VirtualTokens> virtual_tokens_;
};

}  // namespace qtune
