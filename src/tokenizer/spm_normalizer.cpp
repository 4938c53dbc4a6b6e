// sentencepiece's normalizer: see spm_normalizer.h.
#include "tokenizer/spm_normalizer.h"

#include "tokenizer/precompiled_charsmap.h"
#include "tokenizer/sentencepiece_model.h"
#include "tokenizer/unicode.h"

namespace qtune {

namespace {

const std::string kSpace = "\xE2\x96\x81";  // ▁

class SpmNormalizer : public Normalizer {
 public:
  SpmNormalizer(const SpmModel& m, const std::string& source)
      : remove_extra_(m.remove_extra_whitespaces), dummy_(m.add_dummy_prefix), escape_(m.escape_whitespaces) {
    if (!m.precompiled_charsmap.empty()) map_.reset(new PrecompiledCharsmap(m.precompiled_charsmap, source));
  }

  void normalize(std::string& s) const override {
    size_t pos = 0;
    std::string chunk;
    if (remove_extra_) {  // leading spaces (after normalization) are dropped
      while (pos < s.size()) {
        size_t n = next_chunk(s, pos, chunk);
        if (chunk != " ") break;
        pos += n;
      }
    }
    std::string out;
    if (pos >= s.size()) {
      s = out;
      return;
    }
    const std::string space = escape_ ? kSpace : " ";
    if (dummy_) out += space;
    bool prev_space = remove_extra_;
    while (pos < s.size()) {
      size_t n = next_chunk(s, pos, chunk);
      size_t b = 0;
      while (prev_space && b < chunk.size() && chunk[b] == ' ') b++;
      if (b < chunk.size()) {
        for (size_t k = b; k < chunk.size(); k++) {
          if (escape_ && chunk[k] == ' ')
            out += kSpace;
          else
            out += chunk[k];
        }
        prev_space = chunk.back() == ' ';
      }
      pos += n;
      if (!remove_extra_) prev_space = false;
    }
    if (remove_extra_)
      while (out.size() >= space.size() && out.compare(out.size() - space.size(), space.size(), space) == 0)
        out.resize(out.size() - space.size());
    s = out;
  }

 private:
  // The normalized text of the longest rule at s[pos], or the character itself; returns the bytes consumed.
  size_t next_chunk(const std::string& s, size_t pos, std::string& chunk) const {
    const char* rep = nullptr;
    size_t n = map_ ? map_->longest_match(s.data() + pos, s.size() - pos, &rep) : 0;
    if (n > 0) {
      chunk = rep;
      return n;
    }
    int len = utf8_seq_len(s, pos);
    if (len == 0) {
      chunk = "\xEF\xBF\xBD";
      return 1;
    }
    chunk = s.substr(pos, len);
    return len;
  }

  std::unique_ptr<PrecompiledCharsmap> map_;
  bool remove_extra_, dummy_, escape_;
};

}  // namespace

std::unique_ptr<Normalizer> make_spm_normalizer(const SpmModel& m, const std::string& source) {
  return std::make_unique<SpmNormalizer>(m, source);
}

}  // namespace qtune
