// Pre-tokenizers: see pre_tokenizer.h. Each splits a piece into (begin, end, is_match) segments and then
// applies HF's SplitDelimiterBehavior to them, dropping empty results.
#include "tokenizer/pre_tokenizer.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/json_util.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace qtune {

using json = nlohmann::json;

namespace {

// GPT-2's pre-tokenization regex, which HF's ByteLevel pre-tokenizer applies when use_regex is set.
const char* kGpt2Regex = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct Segment {
  size_t b, e;
  bool match;
};

// Turns the match ranges into a cover of [0, n) with match flags (HF's Pattern::find_matches).
std::vector<Segment> cover(const std::vector<std::pair<size_t, size_t>>& m, size_t n) {
  std::vector<Segment> segs;
  size_t prev = 0;
  for (auto& r : m) {
    if (prev != r.first) segs.push_back({prev, r.first, false});
    segs.push_back({r.first, r.second, true});
    prev = r.second;
  }
  if (prev != n) segs.push_back({prev, n, false});
  return segs;
}

std::vector<Segment> apply_behavior(std::vector<Segment> segs, Behavior b) {
  std::vector<Segment> acc;
  bool prev_match = false;
  switch (b) {
    case Behavior::Removed:
      for (auto& s : segs)
        if (!s.match) acc.push_back(s);
      return acc;
    case Behavior::Isolated:
      return segs;
    case Behavior::MergedWithPrevious:
      for (auto& s : segs) {
        if (s.match && !prev_match && !acc.empty())
          acc.back().e = s.e;
        else
          acc.push_back({s.b, s.e, false});
        prev_match = s.match;
      }
      return acc;
    case Behavior::MergedWithNext:
      for (size_t i = segs.size(); i-- > 0;) {
        const Segment& s = segs[i];
        if (s.match && !prev_match && !acc.empty())
          acc.back().b = s.b;
        else
          acc.push_back({s.b, s.e, false});
        prev_match = s.match;
      }
      return std::vector<Segment>(acc.rbegin(), acc.rend());
    case Behavior::Contiguous:
      for (auto& s : segs) {
        if (s.match == prev_match && !acc.empty())
          acc.back().e = s.e;
        else
          acc.push_back({s.b, s.e, false});
        prev_match = s.match;
      }
      return acc;
  }
  return acc;
}

void emit(const PreToken& p, const std::vector<Segment>& segs, std::vector<PreToken>& out) {
  for (auto& s : segs) {
    if (s.e <= s.b) continue;
    out.push_back({p.text.substr(s.b, s.e - s.b), p.at_start && s.b == 0});
  }
}

Behavior parse_behavior(const std::string& s, const std::string& source) {
  if (s == "Removed") return Behavior::Removed;
  if (s == "Isolated") return Behavior::Isolated;
  if (s == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::MergedWithNext;
  if (s == "Contiguous") return Behavior::Contiguous;
  throw_error(ErrorKind::Format, source, ": unknown split behavior \"", s, "\"");
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  // One of re (a regex), pred (a per-character test: Digits, WhitespaceSplit) or literal (a String pattern).
  std::string literal;
  std::unique_ptr<Regex> re;
  bool (*pred)(uint32_t) = nullptr;
  Behavior behavior = Behavior::Isolated;
  bool invert = false;

  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    std::vector<PreToken> out;
    std::vector<std::pair<size_t, size_t>> m;
    for (const PreToken& p : pieces) {
      m.clear();
      find(p.text, m);
      std::vector<Segment> segs = cover(m, p.text.size());
      if (invert)
        for (auto& s : segs) s.match = !s.match;
      emit(p, apply_behavior(std::move(segs), behavior), out);
    }
    pieces.swap(out);
  }

 private:
  void find(const std::string& s, std::vector<std::pair<size_t, size_t>>& m) const {
    if (re) {
      re->find_all(s, m);
    } else if (pred) {  // one match per character with pred true
      size_t i = 0;
      while (i < s.size()) {
        size_t b = i;
        if (pred(utf8_next(s, i))) m.emplace_back(b, i);
      }
    } else if (!literal.empty()) {
      size_t pos = 0;
      while ((pos = s.find(literal, pos)) != std::string::npos) {
        m.emplace_back(pos, pos + literal.size());
        pos += literal.size();
      }
    }
  }
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  bool add_prefix_space = false;
  std::unique_ptr<Regex> re;  // null when use_regex is false
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    std::vector<PreToken> out;
    std::vector<std::pair<size_t, size_t>> m;
    for (PreToken& p : pieces) {
      if (add_prefix_space && !p.text.empty() && p.text[0] != ' ') p.text.insert(0, " ");
      if (re) {
        m.clear();
        re->find_all(p.text, m);
        emit(p, cover(m, p.text.size()), out);
      } else if (!p.text.empty()) {
        out.push_back(std::move(p));
      }
    }
    for (PreToken& p : out) p.text = bytes_to_unicode_string(p.text);
    pieces.swap(out);
  }
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  std::string replacement;
  enum { Always, First, Never } scheme = Always;
  bool split = true;
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    std::vector<PreToken> out;
    for (PreToken& p : pieces) {
      std::string s;
      for (char c : p.text) {
        if (c == ' ')
          s += replacement;
        else
          s += c;
      }
      bool starts = s.compare(0, replacement.size(), replacement) == 0;
      if (!s.empty() && !starts && (scheme == Always || (scheme == First && p.at_start)))
        s.insert(0, replacement);
      if (!split) {
        if (!s.empty()) out.push_back({s, p.at_start});
        continue;
      }
      // MergedWithNext on the replacement character: each word keeps its leading replacement.
      std::vector<std::pair<size_t, size_t>> m;
      size_t pos = 0;
      while ((pos = s.find(replacement, pos)) != std::string::npos) {
        m.emplace_back(pos, pos + replacement.size());
        pos += replacement.size();
      }
      emit({s, p.at_start}, apply_behavior(cover(m, s.size()), Behavior::MergedWithNext), out);
    }
    pieces.swap(out);
  }
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  std::vector<std::unique_ptr<PreTokenizer>> parts;
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    for (auto& p : parts) p->pre_tokenize(pieces);
  }
};

}  // namespace

std::unique_ptr<PreTokenizer> make_metaspace_pre_tokenizer(const std::string& replacement,
                                                           const std::string& prepend_scheme, bool split) {
  auto m = std::make_unique<MetaspacePreTokenizer>();
  m->replacement = replacement;
  m->split = split;
  if (prepend_scheme == "always")
    m->scheme = MetaspacePreTokenizer::Always;
  else if (prepend_scheme == "first")
    m->scheme = MetaspacePreTokenizer::First;
  else if (prepend_scheme == "never")
    m->scheme = MetaspacePreTokenizer::Never;
  else
    throw_error(ErrorKind::Format, "Metaspace: unknown prepend_scheme \"", prepend_scheme, "\"");
  return m;
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& source) {
  if (j.is_null()) return nullptr;
  std::string type = j.at("type").get<std::string>();
  if (type == "Sequence") {
    auto seq = std::make_unique<SequencePreTokenizer>();
    for (const json& p : j.at("pretokenizers")) {
      auto q = make_pre_tokenizer(p, source);
      if (q) seq->parts.push_back(std::move(q));
    }
    return seq;
  }
  if (type == "ByteLevel") {
    auto b = std::make_unique<ByteLevelPreTokenizer>();
    b->add_prefix_space = json_bool(j, "add_prefix_space", true);
    if (json_bool(j, "use_regex", true)) b->re.reset(new Regex(kGpt2Regex, source + " ByteLevel"));
    return b;
  }
  if (type == "Split") {
    auto s = std::make_unique<SplitPreTokenizer>();
    const json& p = j.at("pattern");
    if (p.contains("Regex"))
      s->re.reset(new Regex(p.at("Regex").get<std::string>(), source + " pre_tokenizer Split"));
    else if (p.contains("String"))
      s->literal = p.at("String").get<std::string>();
    else
      throw_error(ErrorKind::Format, source, ": Split pattern must hold \"String\" or \"Regex\", got ",
                  p.dump());
    s->behavior = parse_behavior(j.at("behavior").get<std::string>(), source);
    s->invert = json_bool(j, "invert", false);
    return s;
  }
  if (type == "Metaspace") {
    std::string scheme = "always";
    if (j.contains("prepend_scheme"))
      scheme = j.at("prepend_scheme").get<std::string>();
    else if (j.contains("add_prefix_space") && !j.at("add_prefix_space").get<bool>())
      scheme = "never";
    return make_metaspace_pre_tokenizer(j.value("replacement", std::string("\xE2\x96\x81")), scheme,
                                        json_bool(j, "split", true));
  }
  if (type == "Digits") {
    auto s = std::make_unique<SplitPreTokenizer>();
    s->pred = is_unicode_numeric;  // char::is_numeric, as HF
    s->behavior = json_bool(j, "individual_digits", false) ? Behavior::Isolated : Behavior::Contiguous;
    return s;
  }
  if (type == "WhitespaceSplit") {
    auto s = std::make_unique<SplitPreTokenizer>();
    s->pred = is_unicode_whitespace;
    s->behavior = Behavior::Removed;
    return s;
  }
  throw_error(
      ErrorKind::Unsupported, source, ": pre_tokenizer type \"", type,
      "\" is not supported (supported: ByteLevel, Split, Metaspace, Digits, WhitespaceSplit, Sequence)");
}

}  // namespace qtune
