// Prompt learning adapters in PEFT's format: prompt tuning (PROMPT_TUNING), P-tuning (P_TUNING) and prefix
// tuning (PREFIX_TUNING). A folder holds adapter_config.json and adapter_model.safetensors with one tensor,
// "prompt_embeddings", which is what PEFT uses at inference:
//   PROMPT_TUNING, P_TUNING  [P, token_dim]           the virtual tokens' input embeddings (P-tuning: the
//                                                     prompt encoder's output, as PEFT saves it)
//   PREFIX_TUNING            [P, num_layers·2·token_dim], token_dim = num_key_value_heads·head_dim: row p
//                            holds, for layer l, the key (block 2l) and the value (block 2l+1) of virtual
//                            token p, each [Hkv, D] (PEFT's past_key_values layout)
// (num_virtual_tokens = P). While training, P-tuning and prefix_projection keep a PromptEncoder
// (prompt_encoder.h) whose output becomes prompt_embeddings (refresh()).
//
//   PromptLearningConfig cfg;  cfg.peft_type = PromptLearningType::PrefixTuning;  cfg.num_virtual_tokens =
//   20; PromptLearningModel pl = PromptLearningModel::create(model, cfg, /*seed=*/0); GenerateOptions opt;
//   VirtualTokens vt = pl.virtual_tokens();  opt.virtual_tokens = &vt; pl.save("out");  PromptLearningModel
//   again = PromptLearningModel::load(model, "out");
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/hf_config.h"
#include "model/llama_model.h"
#include "model/virtual_tokens.h"
#include "peft/prompt_encoder.h"

namespace qtune {

enum class PromptLearningType { PromptTuning, PTuning, PrefixTuning };
const char* prompt_learning_type_name(PromptLearningType t);  // "PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"
// True for the three peft_type strings above.
bool is_prompt_learning_type(const std::string& peft_type);

struct PromptLearningConfig {
  PromptLearningType peft_type = PromptLearningType::PromptTuning;
  int64_t num_virtual_tokens = 20;
  // Filled from the model by fill_from_model (PEFT's _prepare_prompt_learning_config): token_dim = hidden
  // size and num_attention_heads = attention heads, except prefix tuning: num_key_value_heads·head_dim and
  // num_key_value_heads; encoder_hidden_size defaults to token_dim.
  int64_t token_dim = 0, num_layers = 0, num_attention_heads = 0;
  int64_t num_transformer_submodules = 1;
  // PROMPT_TUNING: RANDOM (N(0, 1)), TEXT (embeddings of prompt_tuning_init_text's tokens, repeated or cut
  // to P), SAMPLE_VOCAB (embeddings of random token ids).
  std::string prompt_tuning_init = "RANDOM";
  std::string prompt_tuning_init_text, tokenizer_name_or_path;
  // P_TUNING: the encoder (MLP; LSTM folders load, LSTM training is not implemented).
  std::string encoder_reparameterization_type = "MLP";
  int64_t encoder_hidden_size = 0;
  int64_t encoder_num_layers = 2;
  double encoder_dropout = 0.0;
  // PREFIX_TUNING: the projection MLP while training; init_weights "" (PEFT null) or "zero".
  bool prefix_projection = false;
  std::string init_weights;
  std::string base_model_name_or_path;
  std::string task_type = "CAUSAL_LM";

  // The shape of "prompt_embeddings": [P, token_dim] or, prefix tuning, [P, num_layers·2·token_dim].
  Shape embeddings_shape() const;
  void fill_from_model(const ModelConfig& m);
  // Throws ErrorKind::Config (prefixed by context) on P <= 0, unknown init / encoder names, or dims
  // that do not fit model m (another base: hidden size, layers, kv heads) or virtual tokens that fill its
  // context.
  void validate(const ModelConfig& m, const std::string& context) const;
};

// adapter_config.json. read throws ErrorKind::Format / Unsupported naming the file and the field; write
// is atomic and writes every field PEFT 0.21 writes for the type.
PromptLearningConfig read_prompt_learning_config(const std::string& path);
void write_prompt_learning_config(const std::string& path, const PromptLearningConfig& cfg);

class PromptLearningModel {
 public:
  // Fresh virtual tokens with PEFT's init. init_token_ids: the tokens of prompt_tuning_init_text (TEXT
  // init; the caller tokenizes as PEFT does, special tokens included). P-tuning and prefix_projection
  // create their PromptEncoder (seeded).
  static PromptLearningModel create(const LlamaModel& model, PromptLearningConfig cfg, uint64_t seed,
                                    const std::vector<int32_t>& init_token_ids = {});
  // Reads a PEFT folder. Errors name the file: adapter_config.json (peft_type, fields, a base with another
  // hidden size / layer count / kv width, virtual tokens beyond the context), adapter_model.safetensors
  // (no prompt_embeddings, its shape vs the config, extra tensors).
  static PromptLearningModel load(const LlamaModel& model, const std::string& dir);

  // Writes dir/adapter_config.json and dir/adapter_model.safetensors (prompt_embeddings, F32).
  void save(const std::string& dir) const;

  const PromptLearningConfig& config() const { return cfg_; }
  // F32 CPU, embeddings_shape(): what PEFT saves and uses. Trained directly unless there is an encoder.
  Tensor& prompt_embeddings() { return emb_; }
  const Tensor& prompt_embeddings() const { return emb_; }
  // The reparametrisation encoder (P-tuning, prefix_projection) of a fresh adapter; null otherwise
  // (loaded folders hold only its output).
  PromptEncoder* encoder() { return encoder_.get(); }
  // After the encoder's parameters changed: prompt_embeddings = encoder output.
  void refresh();
  // The virtual tokens for the model (model/virtual_tokens.h): embeddings or per-layer prefix K/V rows in
  // the model's activation dtype on its device.
  VirtualTokens virtual_tokens() const;

 private:
  PromptLearningModel() = default;
  const LlamaModel* model_ = nullptr;
  PromptLearningConfig cfg_;
  Tensor emb_;
  std::shared_ptr<PromptEncoder> encoder_;
};

}  // namespace qtune
