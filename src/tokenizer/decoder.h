// Decoders of tokenizer.json ("decoder": {...}): turn the token strings of an id sequence back into text, as
// HF's decode_chain does (each decoder maps a list of strings to a list of strings; the result is joined).
// Supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, BPEDecoder and Sequence.
#pragma once
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace qtune {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::string& source);

// The sentencepiece library's decoding (for tokenizer.model with sentencepiece semantics): "▁" becomes " ",
// the first "▁" of the text is dropped (add_dummy_prefix; all leading ones with remove_extra_whitespaces),
// the unknown piece shows as " ⁇ ", runs of <0xXX> pieces become their bytes (each invalid byte U+FFFD).
std::unique_ptr<Decoder> make_sentencepiece_decoder(const std::string& unk_piece, bool add_dummy_prefix,
                                                    bool remove_extra_whitespaces);

}  // namespace qtune
