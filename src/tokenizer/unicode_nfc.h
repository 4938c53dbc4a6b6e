// Unicode Normalization Form C (canonical decomposition, canonical ordering, canonical composition), for the
// NFC normalizer that Qwen2-style tokenizer.json files use. Tables are generated into unicode_nfc_data.inc by
// tools/make_tokenizer_nfc_tables.py; Hangul syllables are composed and decomposed algorithmically.
#pragma once
#include <string>

namespace qtune {

// s must be valid UTF-8.
std::string nfc_normalize(const std::string& s);

}  // namespace qtune
