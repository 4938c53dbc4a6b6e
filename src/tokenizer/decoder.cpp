// Decoders: see decoder.h.
#include "tokenizer/decoder.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/json_util.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace qtune {

using json = nlohmann::json;

namespace {

// All tokens become one string: each character is mapped back to its byte; a token holding a character
// outside the byte table is kept as its own UTF-8 bytes; the bytes are then decoded lossily.
class ByteLevelDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      std::string mapped;
      bool ok = true;
      size_t i = 0;
      while (i < t.size()) {
        int b = unicode_to_byte(utf8_next(t, i));
        if (b < 0) {
          ok = false;
          break;
        }
        mapped += (char)b;
      }
      bytes += ok ? mapped : t;
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class ReplaceDecoder : public Decoder {
 public:
  std::string from, to;
  std::unique_ptr<Regex> re;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      if (!re) {
        t = replace_all(t, from, to);
        continue;
      }
      std::vector<std::pair<size_t, size_t>> m;
      re->find_all(t, m);
      std::string out;
      size_t pos = 0;
      for (auto& r : m) {
        out.append(t, pos, r.first - pos);
        out += to;
        pos = r.second;
      }
      out.append(t, pos, std::string::npos);
      t = out;
    }
  }
};

int byte_token_value(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; k++) {
    char c = t[k];
    int d = (c >= '0' && c <= '9')   ? c - '0'
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                     : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

// Runs of <0xXX> tokens become their bytes when those are valid UTF-8, else one U+FFFD per byte.
class ByteFallbackDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    size_t npending = 0;
    auto flush = [&] {
      if (npending == 0) return;
      if (find_invalid_utf8(pending) == std::string::npos) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < npending; k++) out.push_back("\xEF\xBF\xBD");
      }
      pending.clear();
      npending = 0;
    };
    for (std::string& t : tokens) {
      int v = byte_token_value(t);
      if (v >= 0) {
        pending += (char)v;
        npending++;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
};

class FuseDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (auto& t : tokens) all += t;
    tokens.assign(1, all);
  }
};

// Removes up to `start` leading and `stop` trailing copies of one character from every token.
class StripDecoder : public Decoder {
 public:
  uint32_t content = ' ';
  size_t start = 0, stop = 0;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::vector<size_t> pos;  // char starts
      std::vector<uint32_t> cps;
      size_t i = 0;
      while (i < t.size()) {
        pos.push_back(i);
        cps.push_back(utf8_next(t, i));
      }
      pos.push_back(t.size());
      size_t b = 0, e = cps.size();
      for (size_t k = 0; k < start && k < cps.size() && cps[k] == content; k++) b = k + 1;
      for (size_t k = 0; k < stop && k < cps.size(); k++) {
        size_t idx = cps.size() - k - 1;
        if (cps[idx] != content) break;
        e = idx;
      }
      t = e > b ? t.substr(pos[b], pos[e] - pos[b]) : std::string();
    }
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  std::string replacement;
  bool prepend = true;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); i++) {
      tokens[i] = replace_all(tokens[i], replacement, (i == 0 && prepend) ? "" : " ");
    }
  }
};

class BpeSuffixDecoder : public Decoder {
 public:
  std::string suffix;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); i++)
      tokens[i] = replace_all(tokens[i], suffix, i + 1 == tokens.size() ? "" : " ");
  }
};

class SentencePieceDecoder : public Decoder {
 public:
  std::string unk;
  bool dummy = true, remove_extra = false;
  void decode_chain(std::vector<std::string>& tokens) const override {
    const std::string space = "\xE2\x96\x81";
    std::string out, bytes;
    bool bos_ws = true;  // still at the start of the text (no visible surface yet)
    auto emit = [&](const std::string& surface, bool consumed_ws) {
      out += surface;
      if (bos_ws && (!surface.empty() || consumed_ws)) bos_ws = false;
    };
    auto flush_bytes = [&] {
      if (bytes.empty()) return;
      std::string surface;
      for (size_t i = 0; i < bytes.size();) {
        int n = utf8_seq_len(bytes, i);
        if (n > 0)
          surface.append(bytes, i, n), i += n;
        else
          surface += "\xEF\xBF\xBD", i += 1;
      }
      bytes.clear();
      emit(surface, false);
    };
    for (const std::string& t : tokens) {
      int v = byte_token_value(t);
      if (v >= 0) {
        bytes += (char)v;
        continue;
      }
      flush_bytes();
      if (t == unk) {
        emit(" \xE2\x81\x87 ", false);
        continue;
      }
      std::string piece = t;
      bool consumed = false;
      if (bos_ws && (dummy || remove_extra) && piece.compare(0, space.size(), space) == 0) {
        piece = piece.substr(space.size());
        consumed = !remove_extra;  // with remove_extra_whitespaces every leading "▁" goes
      }
      emit(replace_all(piece, space, " "), consumed);
    }
    flush_bytes();
    tokens.assign(1, out);
  }
};

class SequenceDecoder : public Decoder {
 public:
  std::vector<std::unique_ptr<Decoder>> parts;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& d : parts) d->decode_chain(tokens);
  }
};

}  // namespace

std::unique_ptr<Decoder> make_sentencepiece_decoder(const std::string& unk_piece, bool add_dummy_prefix,
                                                    bool remove_extra_whitespaces) {
  auto d = std::make_unique<SentencePieceDecoder>();
  d->unk = unk_piece;
  d->dummy = add_dummy_prefix;
  d->remove_extra = remove_extra_whitespaces;
  return d;
}

std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& source) {
  if (j.is_null()) return nullptr;
  std::string type = j.at("type").get<std::string>();
  if (type == "Sequence") {
    auto s = std::make_unique<SequenceDecoder>();
    for (const json& d : j.at("decoders")) {
      auto p = make_decoder(d, source);
      if (p) s->parts.push_back(std::move(p));
    }
    return s;
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Replace") {
    auto r = std::make_unique<ReplaceDecoder>();
    const json& p = j.at("pattern");
    if (p.contains("String"))
      r->from = p.at("String").get<std::string>();
    else if (p.contains("Regex"))
      r->re.reset(new Regex(p.at("Regex").get<std::string>(), source + " decoder Replace"));
    else
      throw_error(ErrorKind::Format, source, ": decoder Replace pattern must hold \"String\" or \"Regex\"");
    r->to = j.at("content").get<std::string>();
    return r;
  }
  if (type == "Strip") {
    auto s = std::make_unique<StripDecoder>();
    std::string c = j.at("content").get<std::string>();
    size_t i = 0;
    if (c.empty() || find_invalid_utf8(c) != std::string::npos)
      throw_error(ErrorKind::Format, source, ": decoder Strip content must be one character");
    s->content = utf8_next(c, i);
    s->start = j.value("start", 0);
    s->stop = j.value("stop", 0);
    return s;
  }
  if (type == "Metaspace") {
    auto m = std::make_unique<MetaspaceDecoder>();
    m->replacement = j.value("replacement", std::string("\xE2\x96\x81"));
    if (j.contains("prepend_scheme"))
      m->prepend = j.at("prepend_scheme").get<std::string>() != "never";
    else
      m->prepend = json_bool(j, "add_prefix_space", true);
    return m;
  }
  if (type == "BPEDecoder") {
    auto b = std::make_unique<BpeSuffixDecoder>();
    b->suffix = j.value("suffix", std::string("</w>"));
    return b;
  }
  throw_error(ErrorKind::Unsupported, source, ": decoder type \"", type,
              "\" is not supported (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, "
              "BPEDecoder, Sequence)");
}

}  // namespace qtune
