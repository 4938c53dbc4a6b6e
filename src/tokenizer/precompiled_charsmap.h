// SentencePiece's precompiled normalization map (NormalizerSpec.precompiled_charsmap; tokenizer.json's
// "Precompiled" normalizer, base64): a darts-clone double-array trie of source strings followed by a blob of
// NUL-terminated replacement strings. HF applies it per extended grapheme cluster: a cluster shorter than 6
// bytes that has an entry (the first, i.e. shortest, key found by common-prefix search) is replaced whole,
// otherwise each character is replaced by its own entry or kept. Grapheme clusters come from PCRE2's \X.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qtune {

class PrecompiledCharsmap {
 public:
  // bytes: the raw charsmap. Throws ErrorKind::Format naming `source` when it is malformed.
  PrecompiledCharsmap(const std::string& bytes, const std::string& source);
  std::string normalize(const std::string& s) const;
  // The sentencepiece library's rule instead: the longest key that is a prefix of s[pos...]; returns its
  // length (0 when none) and sets *out to the replacement.
  size_t longest_match(const char* s, size_t n, const char** out) const;

 private:
  // The replacement for the shortest key that is a prefix of chunk, or nullptr.
  const char* transform(const char* chunk, size_t n) const;
  std::vector<uint32_t> units_;
  std::string normalized_;
};

// Standard base64 (RFC 4648, with padding); throws ErrorKind::Format naming `source` on bad input.
std::string base64_decode(const std::string& in, const std::string& source);

}  // namespace qtune
