// Normalizers: see normalizer.h.
#include "tokenizer/normalizer.h"

#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "tokenizer/json_util.h"
#include "tokenizer/precompiled_charsmap.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"
#include "tokenizer/unicode_nfc.h"

namespace qtune {

using json = nlohmann::json;

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t k = s.find(from, pos);
    if (k == std::string::npos) break;
    out.append(s, pos, k - pos);
    out += to;
    pos = k + from.size();
  }
  out.append(s, pos, std::string::npos);
  return out;
}

namespace {

class SequenceNormalizer : public Normalizer {
 public:
  std::vector<std::unique_ptr<Normalizer>> parts;
  void normalize(std::string& s) const override {
    for (auto& p : parts) p->normalize(s);
  }
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string p) : prefix_(std::move(p)) {}
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix_);  // HF leaves an empty string empty
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::string from, std::string to, std::unique_ptr<Regex> re)
      : from_(std::move(from)), to_(std::move(to)), re_(std::move(re)) {}
  void normalize(std::string& s) const override {
    if (!re_) {
      s = replace_all(s, from_, to_);
      return;
    }
    std::vector<std::pair<size_t, size_t>> m;
    re_->find_all(s, m);
    std::string out;
    size_t pos = 0;
    for (auto& r : m) {
      out.append(s, pos, r.first - pos);
      out += to_;
      pos = r.second;
    }
    out.append(s, pos, std::string::npos);
    s = out;
  }

 private:
  std::string from_, to_;
  std::unique_ptr<Regex> re_;
};

class NfcNormalizer : public Normalizer {
 public:
  void normalize(std::string& s) const override { s = nfc_normalize(s); }
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& s) const override {
    size_t b = 0, e = s.size();
    if (left_) {
      while (b < e) {
        size_t i = b;
        if (!is_unicode_whitespace(utf8_next(s, i))) break;
        b = i;
      }
    }
    if (right_) {
      while (e > b) {
        size_t k = e - 1;
        while (k > b && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        size_t i = k;
        if (!is_unicode_whitespace(utf8_next(s, i))) break;
        e = k;
      }
    }
    s = s.substr(b, e - b);
  }

 private:
  bool left_, right_;
};

class PrecompiledNormalizer : public Normalizer {
 public:
  explicit PrecompiledNormalizer(PrecompiledCharsmap m) : map_(std::move(m)) {}
  void normalize(std::string& s) const override { s = map_.normalize(s); }

 private:
  PrecompiledCharsmap map_;
};

std::string pattern_of(const json& j, const std::string& source, std::unique_ptr<Regex>& re) {
  const json& p = j.at("pattern");
  if (p.contains("String")) return p.at("String").get<std::string>();
  if (p.contains("Regex")) {
    re.reset(new Regex(p.at("Regex").get<std::string>(), source));
    return "";
  }
  throw_error(ErrorKind::Format, source, ": pattern must hold \"String\" or \"Regex\", got ", p.dump());
}

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& source) {
  if (j.is_null()) return nullptr;
  std::string type = j.at("type").get<std::string>();
  if (type == "Sequence") {
    auto seq = std::make_unique<SequenceNormalizer>();
    for (const json& n : j.at("normalizers")) {
      auto p = make_normalizer(n, source);
      if (p) seq->parts.push_back(std::move(p));
    }
    return seq;
  }
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(j.at("prepend").get<std::string>());
  if (type == "Replace") {
    std::unique_ptr<Regex> re;
    std::string from = pattern_of(j, source + " normalizer Replace", re);
    return std::make_unique<ReplaceNormalizer>(from, j.at("content").get<std::string>(), std::move(re));
  }
  if (type == "NFC") return std::make_unique<NfcNormalizer>();
  if (type == "Strip")
    return std::make_unique<StripNormalizer>(json_bool(j, "strip_left", true),
                                             json_bool(j, "strip_right", true));
  if (type == "Precompiled") {
    const json& cm = j.at("precompiled_charsmap");
    if (cm.is_null() || (cm.is_string() && cm.get<std::string>().empty())) return nullptr;
    std::string what = source + " normalizer Precompiled";
    return std::make_unique<PrecompiledNormalizer>(
        PrecompiledCharsmap(base64_decode(cm.get<std::string>(), what), what));
  }
  throw_error(ErrorKind::Unsupported, source, ": normalizer type \"", type,
              "\" is not supported (supported: Sequence, Prepend, Replace, NFC, Strip, Precompiled)");
}

}  // namespace qtune
