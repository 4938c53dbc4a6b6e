// PCRE2 wrapper: see regex.h.
#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace qtune {

namespace {

// Unicode White_Space, which Oniguruma's \s matches. PCRE2's \s also matches U+180E (a space before
// Unicode 6.3).
const char* kWhiteSpace =
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

// Rewrites \s and \S (outside character classes, and \s inside them) as explicit White_Space sets.
std::string oniguruma_spaces(const std::string& p) {
  std::string out;
  bool in_class = false;
  size_t class_start = 0;  // index in p just after '[' or '[^'
  for (size_t i = 0; i < p.size(); i++) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[++i];
      if (n == 's')
        out += in_class ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
      else if (n == 'S' && !in_class)
        out += "[^" + std::string(kWhiteSpace) + "]";
      else
        out += std::string(1, c) + n;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      class_start = i + 1;
      continue;
    }
    if (in_class && c == ']' && i != class_start) in_class = false;  // a ']' first in a class is literal
    out += c;
  }
  return out;
}

}  // namespace

struct Regex::Impl {
  pcre2_code* code = nullptr;
};

Regex::Regex(const std::string& pattern, const std::string& source) : impl_(new Impl) {
  int err = 0;
  PCRE2_SIZE off = 0;
  // The pattern as written is compiled first so that an error points into it; then the rewritten one is used.
  for (const std::string& p : {pattern, oniguruma_spaces(pattern)}) {
    if (impl_->code) pcre2_code_free(impl_->code);
    impl_->code = pcre2_compile((PCRE2_SPTR)p.data(), p.size(), PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (!impl_->code) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof(buf));
      throw_error(ErrorKind::Format, source, ": cannot compile regex /", p, "/ at offset ", off, ": ",
                  (const char*)buf);
    }
  }
  pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is missing
}

Regex::~Regex() {
  if (impl_->code) pcre2_code_free(impl_->code);
}

void Regex::find_all(const std::string& s, std::vector<std::pair<size_t, size_t>>& out) const {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(impl_->code, nullptr);
  size_t pos = 0;
  while (pos <= s.size()) {
    int rc = pcre2_match(impl_->code, (PCRE2_SPTR)s.data(), s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) break;  // PCRE2_ERROR_NOMATCH (or a resource limit: treat the rest as unmatched)
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    out.emplace_back(b, e);
    if (e > b) {
      pos = e;
    } else {  // empty match: step over one character
      if (e >= s.size()) break;
      int n = utf8_seq_len(s, e);
      pos = e + (n > 0 ? n : 1);
    }
  }
  pcre2_match_data_free(md);
}

}  // namespace qtune
