// What transformers (5.x) does on top of tokenizer.json when tokenizer_config.json names a tokenizer class
// with its own constructor: the class keeps the vocabulary, merges, added tokens and post-processor of the
// file but builds the normalizer, pre-tokenizer, decoder and BPE options itself. Mirrored here for the
// classes of the Llama family and its relatives:
//   LlamaTokenizer(Fast): no normalizer; Metaspace("▁", prepend_scheme "first", or "always" with legacy:
//   true,
//     "never" with add_prefix_space: false; split false); decoder Replace("▁", " ") + ByteFallback + Fuse
//     (+ Strip one leading space when add_prefix_space); BPE with byte_fallback and fuse_unk, no unknown
//     token. Not applied when tokenizer.json is byte-level (transformers then loads the file as it is).
//   GPT2Tokenizer(Fast): no normalizer; ByteLevel(add_prefix_space, default false) with GPT-2's regex;
//   ByteLevel
//     decoder; BPE without unknown token.
//   Qwen2Tokenizer(Fast): NFC; Split(Qwen2's regex, Isolated) + ByteLevel(add_prefix_space, default false, no
//     regex); ByteLevel decoder; BPE without unknown token.
// Other classes (PreTrainedTokenizerFast, TokenizersBackend, ...) follow tokenizer.json as it is.
#include <nlohmann/json.hpp>

#include "tokenizer/bpe_model.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace qtune {

using json = nlohmann::json;

namespace {

const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

std::string without_fast(const std::string& cls) {
  const std::string fast = "Fast";
  if (cls.size() > fast.size() && cls.compare(cls.size() - fast.size(), fast.size(), fast) == 0)
    return cls.substr(0, cls.size() - fast.size());
  return cls;
}

}  // namespace

void Tokenizer::apply_tokenizer_class(const std::string& cls_name, int add_prefix_space, bool legacy) {
  std::string cls = without_fast(cls_name);
  const std::string source = cls + " (tokenizer_config.json)";
  auto* bpe = dynamic_cast<BpeModel*>(model_.get());
  if (!bpe || sentencepiece_semantics_) return;
  BpeOptions o;  // no unknown token, no byte fallback, no ignore_merges, unless the class says otherwise
  if (cls == "LlamaTokenizer") {
    if (byte_level_json_) return;
    bool aps = add_prefix_space != 0;
    const char* space = "\xE2\x96\x81";
    normalizer_.reset();
    pre_tokenizer_ =
        make_metaspace_pre_tokenizer(space, aps ? (legacy ? "always" : "first") : "never", false);
    json seq = json::array();
    seq.push_back({{"type", "Replace"}, {"pattern", {{"String", space}}}, {"content", " "}});
    seq.push_back({{"type", "ByteFallback"}});
    seq.push_back({{"type", "Fuse"}});
    if (aps) seq.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    decoder_ = make_decoder({{"type", "Sequence"}, {"decoders", seq}}, source);
    o.byte_fallback = true;
    o.fuse_unk = true;
  } else if (cls == "GPT2Tokenizer" && from_json_) {
    normalizer_.reset();
    pre_tokenizer_ =
        make_pre_tokenizer({{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space == 1}}, source);
    decoder_ = make_decoder({{"type", "ByteLevel"}}, source);
  } else if (cls == "Qwen2Tokenizer" && from_json_) {
    normalizer_ = make_normalizer({{"type", "NFC"}}, source);
    json seq = json::array();
    seq.push_back({{"type", "Split"},
                   {"pattern", {{"Regex", kQwen2Regex}}},
                   {"behavior", "Isolated"},
                   {"invert", false}});
    seq.push_back({{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space == 1}, {"use_regex", false}});
    pre_tokenizer_ = make_pre_tokenizer({{"type", "Sequence"}, {"pretokenizers", seq}}, source);
    decoder_ = make_decoder({{"type", "ByteLevel"}}, source);
  } else {
    return;
  }
  bpe->set_options(o, source);
}

}  // namespace qtune
