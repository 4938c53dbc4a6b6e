// Precompiled charsmap: see precompiled_charsmap.h.
#include "tokenizer/precompiled_charsmap.h"

#include <cstring>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <mutex>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace qtune {

std::string base64_decode(const std::string& in, const std::string& source) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < in.size(); i++) {
    char c = in[i];
    if (c == '=') break;
    int v = val(c);
    if (v < 0) throw_error(ErrorKind::Format, source, ": bad base64 character at offset ", i);
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += (char)((acc >> bits) & 0xFF);
    }
  }
  return out;
}

PrecompiledCharsmap::PrecompiledCharsmap(const std::string& b, const std::string& source) {
  if (b.size() < 4) throw_error(ErrorKind::Format, source, ": precompiled charsmap shorter than 4 bytes");
  uint32_t trie_bytes;
  std::memcpy(&trie_bytes, b.data(), 4);
  if (trie_bytes % 4 != 0 || trie_bytes > b.size() - 4 || trie_bytes == 0)
    throw_error(ErrorKind::Format, source, ": precompiled charsmap trie size ", trie_bytes,
                " does not fit its ", b.size(), " bytes");
  units_.resize(trie_bytes / 4);
  std::memcpy(units_.data(), b.data() + 4, trie_bytes);
  normalized_ = b.substr(4 + trie_bytes);
}

const char* PrecompiledCharsmap::transform(const char* key, size_t n) const {
  // darts-clone common-prefix search; the first hit is the shortest key.
  auto offset = [](uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); };
  auto label = [](uint32_t u) { return u & ((1u << 31) | 0xFF); };
  auto has_leaf = [](uint32_t u) { return ((u >> 8) & 1) != 0; };
  size_t pos = offset(units_[0]);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)key[i];
    pos ^= c;
    if (pos >= units_.size()) return nullptr;
    uint32_t u = units_[pos];
    if (label(u) != c) return nullptr;
    pos ^= offset(u);
    if (pos >= units_.size()) return nullptr;
    if (has_leaf(u)) {
      uint32_t value = units_[pos] & ((1u << 31) - 1);
      if (value >= normalized_.size()) return nullptr;
      return normalized_.c_str() + value;  // NUL-terminated inside the blob
    }
  }
  return nullptr;
}

size_t PrecompiledCharsmap::longest_match(const char* key, size_t n, const char** out) const {
  auto offset = [](uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); };
  auto label = [](uint32_t u) { return u & ((1u << 31) | 0xFF); };
  auto has_leaf = [](uint32_t u) { return ((u >> 8) & 1) != 0; };
  size_t best = 0;
  size_t pos = offset(units_[0]);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)key[i];
    pos ^= c;
    if (pos >= units_.size()) break;
    uint32_t u = units_[pos];
    if (label(u) != c) break;
    pos ^= offset(u);
    if (pos >= units_.size()) break;
    if (has_leaf(u)) {
      uint32_t value = units_[pos] & ((1u << 31) - 1);
      if (value < normalized_.size()) {
        best = i + 1;
        *out = normalized_.c_str() + value;
      }
    }
  }
  return best;
}

std::string PrecompiledCharsmap::normalize(const std::string& s) const {
  static pcre2_code* grapheme = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    int err = 0;
    PCRE2_SIZE off = 0;
    grapheme =
        pcre2_compile((PCRE2_SPTR) "\\X", PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (grapheme) pcre2_jit_compile(grapheme, PCRE2_JIT_COMPLETE);
  });
  std::string out;
  out.reserve(s.size());
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(grapheme, nullptr);
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.size();
    if (pcre2_match(grapheme, (PCRE2_SPTR)s.data(), s.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED, md,
                    nullptr) >= 0)
      end = pcre2_get_ovector_pointer(md)[1];
    if (end <= pos) end = pos + std::max(1, utf8_seq_len(s, pos));
    if (end - pos < 6) {
      if (const char* r = transform(s.data() + pos, end - pos)) {
        out += r;
        pos = end;
        continue;
      }
    }
    while (pos < end) {
      size_t k = pos;
      utf8_next(s, k);
      if (const char* r = transform(s.data() + pos, k - pos))
        out += r;
      else
        out.append(s, pos, k - pos);
      pos = k;
    }
  }
  pcre2_match_data_free(md);
  return out;
}

}  // namespace qtune
