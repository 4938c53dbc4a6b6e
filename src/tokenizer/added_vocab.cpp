// Added-token matching: see added_vocab.h.
#include "tokenizer/added_vocab.h"

#include "tokenizer/unicode.h"

namespace qtune {

namespace {

// The code point that ends at byte e (exclusive) of s.
uint32_t cp_before(const std::string& s, size_t e) {
  size_t k = e - 1;
  while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
  return utf8_next(s, k);
}

}  // namespace

void AddedVocab::add(const AddedToken& t) {
  if (t.content.empty()) return;
  auto it = by_content_.find(t.content);
  size_t idx;
  if (it != by_content_.end()) {  // a later entry with the same content replaces the earlier one
    idx = it->second;
    tokens_[idx] = t;
  } else {
    idx = tokens_.size();
    tokens_.push_back(t);
    by_content_[t.content] = idx;
  }
  tokens_[idx].surface = t.content;
  by_id_[t.id] = idx;
  insert(idx);
}

void AddedVocab::set_normalizer(const std::function<void(std::string&)>& normalize) {
  trie_[1].clear();
  for (size_t i = 0; i < tokens_.size(); i++) {
    AddedToken& t = tokens_[i];
    if (!t.normalized) continue;
    t.surface = t.content;
    if (normalize) normalize(t.surface);
    insert(i);
  }
}

void AddedVocab::insert(size_t idx) {
  const AddedToken& t = tokens_[idx];
  if (!t.in_text || t.surface.empty()) return;
  std::vector<TrieNode>& trie = trie_[t.normalized ? 1 : 0];
  if (trie.empty()) trie.emplace_back();
  int node = 0;
  for (unsigned char c : t.surface) {
    auto nx = trie[node].next.find(c);
    if (nx == trie[node].next.end()) {
      trie.emplace_back();
      int n = (int)trie.size() - 1;
      trie[node].next[c] = n;
      node = n;
    } else {
      node = nx->second;
    }
  }
  trie[node].token = (int)idx;
}

const AddedToken* AddedVocab::find_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocab::find_content(const std::string& content) const {
  auto it = by_content_.find(content);
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

std::vector<TextSplit> AddedVocab::split(const std::string& s, bool normalized) const {
  std::vector<TextSplit> out;
  const std::vector<TrieNode>& trie = trie_[normalized ? 1 : 0];
  if (s.empty() || trie.empty()) {
    out.push_back({s, -1, 0});
    return out;
  }
  size_t start_offset = 0;  // end of the previous accepted match
  size_t pos = 0;           // where the scan for the next match starts
  while (pos < s.size()) {
    // Leftmost-longest: the first position where some token starts, the longest token there.
    size_t mb = std::string::npos, me = 0;
    int mt = -1;
    for (size_t b = pos; b < s.size() && mt < 0; b++) {
      int node = 0;
      for (size_t k = b; k < s.size(); k++) {
        auto nx = trie[node].next.find((unsigned char)s[k]);
        if (nx == trie[node].next.end()) break;
        node = nx->second;
        if (trie[node].token >= 0) {
          mt = trie[node].token;
          mb = b;
          me = k + 1;
        }
      }
    }
    if (mt < 0) break;
    pos = me;  // the matcher resumes after the raw match, whatever lstrip/rstrip do
    const AddedToken& t = tokens_[mt];
    size_t start = mb, stop = me;
    if (t.single_word) {
      bool start_ok = start == 0 || !is_word_char(cp_before(s, start));
      size_t k = stop;
      bool stop_ok = stop == s.size() || !is_word_char(utf8_next(s, k));
      if (!start_ok || !stop_ok) continue;
    }
    if (t.lstrip) {
      size_t b = start;
      while (b > 0) {
        size_t k = b - 1;
        while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        size_t kk = k;
        if (!is_unicode_whitespace(utf8_next(s, kk))) break;
        b = k;
      }
      start = std::max(b, start_offset);
    }
    if (t.rstrip) {
      size_t k = stop;
      while (k < s.size()) {
        size_t kk = k;
        if (!is_unicode_whitespace(utf8_next(s, kk))) break;
        k = kk;
      }
      stop = k;
    }
    if (start_offset < start) out.push_back({s.substr(start_offset, start - start_offset), -1, start_offset});
    out.push_back({s.substr(start, stop - start), t.id, start});
    start_offset = stop;
  }
  if (start_offset < s.size()) out.push_back({s.substr(start_offset), -1, start_offset});
  return out;
}

}  // namespace qtune
