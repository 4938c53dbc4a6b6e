// Post-processors of tokenizer.json ("post_processor": {...}): add the special tokens around a single encoded
// sequence when add_special_tokens is set. Supported: TemplateProcessing (single template), RobertaProcessing
// and BertProcessing (cls A sep), ByteLevel (ids unchanged) and Sequence.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace qtune {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids) const = 0;
};

std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j, const std::string& source);

// prefix + ids + suffix (what the tokenizer.model loader uses for add_bos_token / add_eos_token).
std::unique_ptr<PostProcessor> make_affix_post_processor(std::vector<int32_t> prefix,
                                                         std::vector<int32_t> suffix);

}  // namespace qtune
