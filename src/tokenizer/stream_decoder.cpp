// StreamDecoder: decodes a growing id sequence piece by piece. It keeps a small window of ids: the ones
// already emitted that the next text may depend on (a decoder may strip a leading space or join bytes across
// tokens), decodes the window with and without the new ids, and emits the difference once it does not end in
// an incomplete character (which lossy decoding shows as U+FFFD). The window then slides forward, so the cost
// per token stays constant.
//
// When the tokenizer cleans up tokenization spaces (" ." -> "."), that step needs context on both sides, so
// raw text is held until a cut where clean-up cannot act across: a space that is not preceded by a quote and
// is followed by a character no clean-up pattern continues with. Clean-up of the text before such a cut is
// final.
#include "tokenizer/tokenizer.h"

namespace qtune {

namespace {

bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

// The last position c in s where s[c] == ' ', s[c-1] != '\'', and s[c+1] is not one of . ? ! , ' n (the
// characters that follow the space of a clean-up pattern), or 0 when there is none.
size_t last_clean_cut(const std::string& s) {
  for (size_t c = s.size() >= 2 ? s.size() - 2 : 0; c >= 1; c--) {
    char n = s[c + 1];
    if (s[c] == ' ' && s[c - 1] != '\'' && n != '.' && n != '?' && n != '!' && n != ',' && n != '\'' &&
        n != 'n')
      return c;
  }
  return 0;
}

}  // namespace

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_(skip_special_tokens) {}

void StreamDecoder::reset() {
  ids_.clear();
  prefix_ = read_ = 0;
  prefix_text_.clear();
  pending_.clear();
}

std::string StreamDecoder::push(int32_t id) {
  ids_.push_back(id);
  std::vector<int32_t> window(ids_.begin() + prefix_, ids_.end());
  std::string text = tok_.decode_raw(window, skip_special_);
  if (text.size() <= prefix_text_.size() || ends_with_replacement(text) ||
      text.compare(0, prefix_text_.size(), prefix_text_) != 0)
    return "";  // nothing new yet, or an incomplete character: hold
  std::string out = text.substr(prefix_text_.size());
  // The ids just emitted become the context of the next step.
  prefix_ = read_;
  read_ = ids_.size();
  std::vector<int32_t> ctx(ids_.begin() + prefix_, ids_.begin() + read_);
  prefix_text_ = tok_.decode_raw(ctx, skip_special_);
  if (!tok_.cleans_up_spaces()) return out;
  pending_ += out;
  size_t cut = last_clean_cut(pending_);
  if (cut == 0) return "";
  out = clean_up_tokenization(pending_.substr(0, cut));
  pending_.erase(0, cut);
  return out;
}

std::string StreamDecoder::finish() {
  std::vector<int32_t> window(ids_.begin() + prefix_, ids_.end());
  std::string text = tok_.decode_raw(window, skip_special_);
  std::string out =
      text.size() > prefix_text_.size() && text.compare(0, prefix_text_.size(), prefix_text_) == 0
          ? text.substr(prefix_text_.size())
          : std::string();
  if (tok_.cleans_up_spaces()) out = clean_up_tokenization(pending_ + out);
  reset();
  return out;
}

}  // namespace qtune
