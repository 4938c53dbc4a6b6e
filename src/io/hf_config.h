// Hugging Face config.json for the Llama family (LlamaForCausalLM, MistralForCausalLM,
// Qwen2ForCausalLM): the fields the forward pass needs, with HF's defaults where a field is absent.
#pragma once
#include <string>
#include <vector>

namespace qtune {

struct RopeScaling {
  std::string type;  // "" (none), "llama3", "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM"
  std::string model_type;    // "llama" | "mistral" | "qwen2"
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // defaults to num_attention_heads
  int head_dim = 0;             // defaults to hidden_size / num_attention_heads
  int vocab_size = 0;
  int max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (and o for Llama's attention_bias) biases; Qwen2 has q/k/v biases
  bool o_proj_bias = false;
  bool mlp_bias = false;
  std::string hidden_act = "silu";
  std::string torch_dtype = "float32";  // "dtype" (transformers 5) or "torch_dtype"; float32|float16|bfloat16
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;  // config.json's eos_token_id (int or list)
  int pad_token_id = -1;
  int sliding_window = 0;  // 0 = none (Mistral/Qwen2 may set it; qtune attends fully and warns beyond)
};

// Reads dir/config.json (or a config.json path). Throws ErrorKind::Config naming the file and field for
// malformed JSON, missing or invalid fields, and unknown architectures (listing the supported ones).
//
// Required: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size (> 0).
// Absent fields take the transformers 5 class defaults of the config's model_type, e.g.
// num_key_value_heads: llama → num_attention_heads, mistral → 8, qwen2 → 32 (an explicit null →
// num_attention_heads); max_position_embeddings 2048 / 131072 / 32768; bos/eos 1/2 (llama, mistral),
// none (qwen2); Mistral's sliding_window 4096 (null = none), Qwen2's only with use_sliding_window.
// Biases follow the modeling code, not the JSON, where it ignores the JSON: qwen2 → q/k/v bias, no o bias;
// mistral → none; llama → attention_bias on q/k/v/o, mlp_bias on gate/up/down.
// RoPE: "rope_parameters" (transformers 5) or "rope_scaling" (4.x); rope_theta inside it wins over the
// top-level one (default 10000); rope_type (or "type") default | linear | llama3, anything else is an error.
// The architecture is architectures[0], or derived from model_type when "architectures" is absent.
ModelConfig load_model_config(const std::string& path);
ModelConfig parse_model_config(const std::string& json_text, const std::string& source_name);

}  // namespace qtune
