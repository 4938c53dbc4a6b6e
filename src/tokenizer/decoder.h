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

}  // namespace qtune
