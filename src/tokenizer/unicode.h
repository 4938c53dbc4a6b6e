// UTF-8 helpers shared by the tokenizer pieces: validation (with the offset of the first bad byte), code
// point iteration, lossy decoding with the same replacement rule as Rust's String::from_utf8_lossy (one
// U+FFFD per maximal ill-formed subpart, which is also Python's errors="replace"), and the few Unicode
// character classes that HF's tokenizers use outside of regexes (char::is_whitespace, char::is_alphanumeric).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace qtune {

// Returns the byte offset of the first byte that does not start a well-formed UTF-8 sequence, or npos.
size_t find_invalid_utf8(const std::string& s);

// Length in bytes of the well-formed sequence at s[i] (1..4), or 0 when s[i] starts an ill-formed one.
int utf8_seq_len(const std::string& s, size_t i);

// Decodes the code point at s[i] (which must start a well-formed sequence) and advances i past it.
uint32_t utf8_next(const std::string& s, size_t& i);

void append_utf8(std::string& out, uint32_t cp);

// Replaces every maximal ill-formed subpart with U+FFFD (Rust from_utf8_lossy semantics).
std::string utf8_lossy(const std::string& bytes);

// Rust's char::is_whitespace (Unicode White_Space).
bool is_unicode_whitespace(uint32_t cp);

// Rust's char::is_numeric (general category Nd, Nl or No), which HF's Digits pre-tokenizer splits on.
bool is_unicode_numeric(uint32_t cp);

// A word character as the Rust regex crate's \w sees it (Alphabetic, Mark, Decimal_Number,
// Connector_Punctuation, Join_Control): what AddedToken::single_word tests on each side of a match.
bool is_word_char(uint32_t cp);

}  // namespace qtune
