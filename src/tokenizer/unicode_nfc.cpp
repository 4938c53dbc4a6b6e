// NFC: see unicode_nfc.h.
#include "tokenizer/unicode_nfc.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tokenizer/unicode.h"

namespace qtune {

namespace {

#include "tokenizer/unicode_nfc_data.inc"

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

int ccc(uint32_t cp) {
  if (cp < 0x300) return 0;
  size_t n = sizeof(kNfcCcc) / sizeof(kNfcCcc[0]);
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (kNfcCcc[mid][0] < cp)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < n && kNfcCcc[lo][0] == cp ? (int)kNfcCcc[lo][1] : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (cp >= 0xC0) {
    size_t n = sizeof(kNfcDecomp) / sizeof(kNfcDecomp[0]);
    size_t lo = 0, hi = n;
    while (lo < hi) {
      size_t mid = (lo + hi) / 2;
      if (kNfcDecomp[mid][0] < cp)
        lo = mid + 1;
      else
        hi = mid;
    }
    if (lo < n && kNfcDecomp[lo][0] == cp) {
      for (uint32_t k = 0; k < kNfcDecomp[lo][2]; k++) out.push_back(kNfcDecompFlat[kNfcDecomp[lo][1] + k]);
      return;
    }
  }
  out.push_back(cp);
}

// The primary composite of (a, b), or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  size_t n = sizeof(kNfcComp) / sizeof(kNfcComp[0]);
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (kNfcComp[mid][0] < a || (kNfcComp[mid][0] == a && kNfcComp[mid][1] < b))
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < n && kNfcComp[lo][0] == a && kNfcComp[lo][1] == b ? kNfcComp[lo][2] : 0;
}

}  // namespace

std::string nfc_normalize(const std::string& s) {
  bool ascii = true;
  for (unsigned char c : s) ascii = ascii && c < 0x80;
  if (ascii) return s;
  std::vector<uint32_t> cps;
  size_t i = 0;
  while (i < s.size()) decompose(utf8_next(s, i), cps);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t a = 0; a < cps.size();) {
    if (ccc(cps[a]) == 0) {
      a++;
      continue;
    }
    size_t b = a;
    while (b < cps.size() && ccc(cps[b]) != 0) b++;
    std::stable_sort(cps.begin() + a, cps.begin() + b,
                     [](uint32_t x, uint32_t y) { return ccc(x) < ccc(y); });
    a = b;
  }
  // Canonical composition: c joins the last starter when nothing between them blocks it (the character just
  // before c is the starter itself, or a non-starter of lower class: the run is sorted, so it is the
  // largest).
  std::vector<uint32_t> out;
  out.reserve(cps.size());
  int starter = -1;  // index in out of the last starter
  int last_ccc = 0;  // class of the last character appended
  for (uint32_t c : cps) {
    int k = ccc(c);
    if (starter >= 0) {
      bool adjacent = (int)out.size() - 1 == starter;
      if (adjacent || (last_ccc != 0 && last_ccc < k)) {
        uint32_t p = compose(out[starter], c);
        if (p) {
          out[starter] = p;
          continue;
        }
      }
    }
    if (k == 0) starter = (int)out.size();
    last_ccc = k;
    out.push_back(c);
  }
  std::string r;
  r.reserve(s.size());
  for (uint32_t c : out) append_utf8(r, c);
  return r;
}

}  // namespace qtune
