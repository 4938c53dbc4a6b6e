// Added tokens (tokenizer.json "added_tokens"): strings matched in the input before normalization and
// pre-tokenization, the way HF's AddedVocabulary does it. Tokens with normalized=false are matched in the raw
// text; tokens with normalized=true in the normalized text of the pieces between them. Matching is leftmost-
// longest; single_word keeps a match only when it is not inside a word (no \w neighbour); lstrip/rstrip
// swallow the whitespace before/after the match.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

namespace qtune {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false, rstrip = false, normalized = false, single_word = false;
  // Matched in input text (false: known for decoding only, like sentencepiece's control pieces).
  bool in_text = true;
  // What matching (normalized tokens) and decoding use: content, or for a normalized token its normalized
  // form once set_normalizer has run (HF keeps the normalized form; token_to_id still takes content).
  std::string surface;
};

// A run of input text: either an added token (id >= 0) or text to normalize and tokenize (id == -1).
struct TextSplit {
  std::string text;
  int32_t id = -1;
  size_t offset = 0;  // byte offset of text in the string that was split
};

class AddedVocab {
 public:
  void add(const AddedToken& t);
  // Recomputes the normalized tokens' surface with `normalize` (null: none) and rebuilds their matcher.
  void set_normalizer(const std::function<void(std::string&)>& normalize);
  bool empty() const { return tokens_.empty(); }
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  const AddedToken* find_id(int32_t id) const;
  const AddedToken* find_content(const std::string& content) const;

  // Splits s on the tokens with the given `normalized` flag. Non-empty pieces only, except that an empty s
  // gives one empty text split (as HF).
  std::vector<TextSplit> split(const std::string& s, bool normalized) const;

 private:
  struct TrieNode {
    std::unordered_map<unsigned char, int> next;
    int token = -1;  // index into tokens_
  };
  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  void insert(size_t idx);
  std::vector<TrieNode> trie_[2];  // [normalized]
};

}  // namespace qtune
