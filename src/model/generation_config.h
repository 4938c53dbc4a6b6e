// Generation defaults of a model folder: generation_config.json when present (as transformers'
// generate() uses it), else config.json's token ids. eos_token_id may be an int or a list in both.
#pragma once
#include <string>
#include <vector>

#include "io/hf_config.h"

namespace qtune {

struct GenerationConfig {
  std::vector<int> eos_token_ids;  // generation stops at any of these
  int bos_token_id = -1;
  int pad_token_id = -1;
  // Sampling defaults (transformers' GenerationConfig defaults when the file does not set them).
  bool do_sample = false;
  float temperature = 1.0f;
  int top_k = 50;
  float top_p = 1.0f;
  int max_new_tokens = -1;  // -1: not set
  bool from_file = false;   // generation_config.json was found
};

// dir: the model folder. Throws ErrorKind::Config naming the file and field for malformed JSON.
GenerationConfig load_generation_config(const std::string& dir, const ModelConfig& cfg);

}  // namespace qtune
