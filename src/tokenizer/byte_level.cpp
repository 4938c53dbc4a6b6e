// Byte-level table: see byte_level.h.
#include "tokenizer/byte_level.h"

#include <vector>

#include "tokenizer/unicode.h"

namespace qtune {

namespace {

struct ByteTable {
  std::string to_str[256];
  int cp_of[256];
  std::vector<int> from_cp;  // indexed by code point (< 324)
  ByteTable() {
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); };
    int n = 0;
    for (int b = 0; b < 256; b++) cp_of[b] = printable(b) ? b : 256 + n++;
    from_cp.assign(256 + n, -1);
    for (int b = 0; b < 256; b++) {
      append_utf8(to_str[b], cp_of[b]);
      from_cp[cp_of[b]] = b;
    }
  }
};

const ByteTable& table() {
  static const ByteTable t;
  return t;
}

}  // namespace

const std::string& byte_to_unicode(uint8_t b) {
  return table().to_str[b];
}

int unicode_to_byte(uint32_t cp) {
  const ByteTable& t = table();
  return cp < t.from_cp.size() ? t.from_cp[cp] : -1;
}

std::string bytes_to_unicode_string(const std::string& s) {
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char c : s) out += byte_to_unicode(c);
  return out;
}

}  // namespace qtune
