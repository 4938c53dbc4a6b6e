// GPT-2's byte-to-unicode table: every byte maps to a printable code point (bytes that are printable Latin-1
// map to themselves, the rest to U+0100 + n in order), so byte-level BPE vocabularies are plain strings.
#pragma once
#include <cstdint>
#include <string>

namespace qtune {

// The UTF-8 string of the code point standing for byte b.
const std::string& byte_to_unicode(uint8_t b);

// The byte a code point stands for, or -1 when cp is not in the table.
int unicode_to_byte(uint32_t cp);

// Maps every byte of s through byte_to_unicode.
std::string bytes_to_unicode_string(const std::string& s);

}  // namespace qtune
