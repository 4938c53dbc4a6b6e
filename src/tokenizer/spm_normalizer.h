// The sentencepiece library's own normalizer (normalizer.cc), for tokenizer.model files loaded with
// sentencepiece semantics: the precompiled charsmap applied by longest match from left to right (malformed
// bytes become U+FFFD), remove_extra_whitespaces (no leading or trailing spaces, runs collapsed to one),
// add_dummy_prefix (a space before the text) and escape_whitespaces (spaces become "▁").
#pragma once
#include <memory>
#include <string>

#include "tokenizer/normalizer.h"

namespace qtune {

struct SpmModel;

// The charsmap may be empty (identity). Throws ErrorKind::Format naming `source` when it is malformed.
std::unique_ptr<Normalizer> make_spm_normalizer(const SpmModel& m, const std::string& source);

}  // namespace qtune
