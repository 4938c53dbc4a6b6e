// Pre-tokenizers of tokenizer.json ("pre_tokenizer": {...}): split a piece of normalized text into words that
// the model tokenizes independently. Supported: ByteLevel (GPT-2 regex, add_prefix_space, use_regex), Split
// (String or Regex pattern; Removed/Isolated/MergedWithPrevious/MergedWithNext/Contiguous; invert), Metaspace
// (prepend_scheme always/first/never, split), Digits, WhitespaceSplit and Sequence.
#pragma once
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace qtune {

// A piece of text on its way to the model. at_start: the piece begins at offset 0 of the original input
// (HF's offsets_original().0 == 0, which Metaspace's prepend_scheme "first" tests).
struct PreToken {
  std::string text;
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their splits (empty splits are dropped, as HF does).
  virtual void pre_tokenize(std::vector<PreToken>& pieces) const = 0;
};

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, const std::string& source);

// Metaspace with the given prepend scheme ("always", "first", "never") and split flag.
std::unique_ptr<PreTokenizer> make_metaspace_pre_tokenizer(const std::string& replacement,
                                                           const std::string& prepend_scheme, bool split);

}  // namespace qtune
