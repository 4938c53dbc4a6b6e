// A compiled Unicode regex (PCRE2, UTF + UCP mode, JIT when available) for the Split and ByteLevel
// pre-tokenizers. HF compiles these patterns with Oniguruma; the patterns models ship (GPT-2, Llama 3, Qwen2)
// use only syntax both engines read the same way (\p{L}, \p{N}, (?i:...), \s+(?!\S)). Matches are scanned
// left to right like onig's find_iter: after an empty match the scan moves on by one character. \s and \S
// are rewritten as Unicode White_Space sets, as Oniguruma reads them (PCRE2's \s also takes U+180E).
// Known gap: PCRE2 10.42 has Unicode 14 tables, so letters and digits assigned later are unassigned here.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qtune {

class Regex {
 public:
  // Throws ErrorKind::Format naming `source` (e.g. "tokenizer.json pre_tokenizer") and the error offset.
  Regex(const std::string& pattern, const std::string& source);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the [begin, end) byte ranges of all non-overlapping matches in s (valid UTF-8).
  void find_all(const std::string& s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qtune
