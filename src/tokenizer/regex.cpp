// PCRE2 wrapper: see regex.h.
#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace qtune {

struct Regex::Impl {
  pcre2_code* code = nullptr;
};

Regex::Regex(const std::string& pattern, const std::string& source) : impl_(new Impl) {
  int err = 0;
  PCRE2_SIZE off = 0;
  impl_->code =
      pcre2_compile((PCRE2_SPTR)pattern.data(), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof(buf));
    throw_error(ErrorKind::Format, source, ": cannot compile regex /", pattern, "/ at offset ", off, ": ",
                (const char*)buf);
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
