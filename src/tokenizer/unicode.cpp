// UTF-8 helpers: see unicode.h.
#include "tokenizer/unicode.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace qtune {

namespace {

// Valid range of the second byte of a multi-byte sequence, by lead byte (Unicode Table 3-7).
bool second_byte_ok(unsigned char lead, unsigned char b) {
  if (lead == 0xE0) return b >= 0xA0 && b <= 0xBF;
  if (lead == 0xED) return b >= 0x80 && b <= 0x9F;
  if (lead == 0xF0) return b >= 0x90 && b <= 0xBF;
  if (lead == 0xF4) return b >= 0x80 && b <= 0x8F;
  return b >= 0x80 && b <= 0xBF;
}

int lead_len(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 0;
}

// Number of bytes of the maximal subpart starting at i: the longest prefix of a well-formed sequence (>= 1).
size_t maximal_subpart(const std::string& s, size_t i) {
  unsigned char lead = (unsigned char)s[i];
  int n = lead_len(lead);
  if (n <= 1) return 1;
  size_t k = 1;
  if (i + 1 >= s.size() || !second_byte_ok(lead, (unsigned char)s[i + 1])) return 1;
  k = 2;
  while ((int)k < n && i + k < s.size() && ((unsigned char)s[i + k] & 0xC0) == 0x80) k++;
  return k;
}

}  // namespace

int utf8_seq_len(const std::string& s, size_t i) {
  unsigned char lead = (unsigned char)s[i];
  int n = lead_len(lead);
  if (n == 0) return 0;
  if (n == 1) return 1;
  if (i + n > s.size()) return 0;
  if (!second_byte_ok(lead, (unsigned char)s[i + 1])) return 0;
  for (int k = 2; k < n; k++)
    if (((unsigned char)s[i + k] & 0xC0) != 0x80) return 0;
  return n;
}

size_t find_invalid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    int n = utf8_seq_len(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string::npos;
}

uint32_t utf8_next(const std::string& s, size_t& i) {
  unsigned char c = (unsigned char)s[i];
  if (c < 0x80) {
    i += 1;
    return c;
  }
  int n = lead_len(c);
  uint32_t cp = c & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
  for (int k = 1; k < n; k++) cp = (cp << 6) | ((unsigned char)s[i + k] & 0x3F);
  i += n;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += (char)cp;
  } else if (cp < 0x800) {
    out += (char)(0xC0 | (cp >> 6));
    out += (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += (char)(0xE0 | (cp >> 12));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  } else {
    out += (char)(0xF0 | (cp >> 18));
    out += (char)(0x80 | ((cp >> 12) & 0x3F));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  }
}

std::string utf8_lossy(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    int n = utf8_seq_len(bytes, i);
    if (n > 0) {
      out.append(bytes, i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += maximal_subpart(bytes, i);
    }
  }
  return out;
}

bool is_unicode_whitespace(uint32_t cp) {
  // The White_Space property (PropList.txt), which is what Rust's char::is_whitespace tests.
  if (cp >= 0x09 && cp <= 0x0D) return true;
  switch (cp) {
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

namespace {

// Whether the one-character string of cp matches `re` (a class anchored at the start).
bool matches_class(pcre2_code* re, uint32_t cp) {
  if (!re) return false;
  std::string s;
  append_utf8(s, cp);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(re, nullptr);
  int rc = pcre2_match(re, (PCRE2_SPTR)s.data(), s.size(), 0, 0, md, nullptr);
  pcre2_match_data_free(md);
  return rc >= 0;
}

pcre2_code* compile_class(const char* pattern) {
  int err = 0;
  PCRE2_SIZE off = 0;
  return pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &off,
                       nullptr);
}

}  // namespace

bool is_unicode_numeric(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  static pcre2_code* re = compile_class("^\\p{N}");
  return matches_class(re, cp);
}

bool is_word_char(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') || cp == '_';
  // (function-local statics are initialized once, thread-safely)
  static pcre2_code* re = compile_class("^[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]");
  return matches_class(re, cp);
}

}  // namespace qtune
