// tokenizer.model reader: see sentencepiece_model.h. Field numbers are those of sentencepiece_model.proto:
// ModelProto {1: pieces, 2: trainer_spec, 3: normalizer_spec}, SentencePiece {1: piece, 2: score, 3: type},
// TrainerSpec {3: model_type, 24: treat_whitespace_as_suffix, 35: byte_fallback, 40-43: unk/bos/eos/pad id},
// NormalizerSpec {1: name, 2: precompiled_charsmap, 3: add_dummy_prefix, 4: remove_extra_whitespaces,
// 5: escape_whitespaces}.
#include "tokenizer/sentencepiece_model.h"

#include <cstring>

#include "core/error.h"

namespace qtune {

namespace {

// A cursor over one message's bytes [pos, end) of the whole buffer (offsets reported from the file start).
class Wire {
 public:
  Wire(const std::string& buf, size_t begin, size_t end, const std::string& source)
      : b_(buf), pos_(begin), end_(end), source_(source) {}
  bool done() const { return pos_ >= end_; }
  size_t pos() const { return pos_; }

  uint64_t varint() {
    uint64_t v = 0;
    size_t start = pos_;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= end_) fail(start, "truncated varint");
      unsigned char c = (unsigned char)b_[pos_++];
      v |= (uint64_t)(c & 0x7F) << shift;
      if (!(c & 0x80)) return v;
    }
    fail(start, "varint longer than 10 bytes");
  }
  // Reads a tag; returns false at the end of the message.
  bool tag(int& field, int& wire) {
    if (done()) return false;
    size_t at = tag_pos_ = pos_;
    uint64_t t = varint();
    field = (int)(t >> 3);
    wire = (int)(t & 7);
    if (field == 0) fail(at, "field number 0");
    return true;
  }
  // Returns [begin, end) of a length-delimited field's payload and moves past it.
  std::pair<size_t, size_t> bytes() {
    size_t at = pos_;
    uint64_t n = varint();
    if (n > end_ - pos_)
      fail(at, "length-delimited field of " + std::to_string(n) + " bytes runs past the end");
    size_t b = pos_;
    pos_ += n;
    return {b, pos_};
  }
  float f32() {
    if (end_ - pos_ < 4) fail(pos_, "truncated 32-bit field");
    float f;
    std::memcpy(&f, b_.data() + pos_, 4);
    pos_ += 4;
    return f;
  }
  void skip(int wire) {
    size_t at = pos_;
    switch (wire) {
      case 0:
        varint();
        break;
      case 1:
        if (end_ - pos_ < 8) fail(at, "truncated 64-bit field");
        pos_ += 8;
        break;
      case 2:
        bytes();
        break;
      case 5:
        if (end_ - pos_ < 4) fail(at, "truncated 32-bit field");
        pos_ += 4;
        break;
      default:
        fail(at, "unsupported wire type " + std::to_string(wire));
    }
  }
  void expect(int wire, int want, int field, const char* what) {
    if (wire != want)
      fail(tag_pos_, std::string("field ") + what + " (" + std::to_string(field) + ") has wire type " +
                         std::to_string(wire) + ", expected " + std::to_string(want));
  }
  [[noreturn]] void fail(size_t at, const std::string& why) const {
    throw_error(ErrorKind::Format, source_, ": corrupt sentencepiece model at byte offset ", at, ": ", why);
  }

 private:
  const std::string& b_;
  size_t pos_, end_;
  size_t tag_pos_ = 0;  // where the last tag started
  const std::string& source_;
};

void parse_piece(const std::string& buf, std::pair<size_t, size_t> r, const std::string& source,
                 SpmModel& m) {
  Wire w(buf, r.first, r.second, source);
  SpmPiece p;
  bool have_piece = false;
  int f, t;
  while (w.tag(f, t)) {
    if (f == 1) {
      w.expect(t, 2, f, "piece");
      auto s = w.bytes();
      p.piece = buf.substr(s.first, s.second - s.first);
      have_piece = true;
    } else if (f == 2) {
      w.expect(t, 5, f, "score");
      p.score = w.f32();
    } else if (f == 3) {
      w.expect(t, 0, f, "type");
      uint64_t v = w.varint();
      if (v < 1 || v > 6) w.fail(w.pos(), "piece type " + std::to_string(v) + " is not 1..6");
      p.type = (SpmPieceType)v;
    } else {
      w.skip(t);
    }
  }
  if (!have_piece) w.fail(r.first, "piece " + std::to_string(m.pieces.size()) + " has no string");
  m.pieces.push_back(std::move(p));
}

int32_t as_int32(uint64_t v) {
  return (int32_t)(uint32_t)v;
}  // protobuf int32: negative as 10-byte varint

void parse_trainer(const std::string& buf, std::pair<size_t, size_t> r, const std::string& source,
                   SpmModel& m) {
  Wire w(buf, r.first, r.second, source);
  int f, t;
  while (w.tag(f, t)) {
    if (t == 0 && (f == 3 || f == 24 || f == 35 || (f >= 40 && f <= 43))) {
      uint64_t v = w.varint();
      switch (f) {
        case 3:
          if (v < 1 || v > 4) w.fail(w.pos(), "model_type " + std::to_string(v) + " is not 1..4");
          m.model_type = (SpmModelType)v;
          break;
        case 24:
          m.treat_whitespace_as_suffix = v != 0;
          break;
        case 35:
          m.byte_fallback = v != 0;
          break;
        case 40:
          m.unk_id = as_int32(v);
          break;
        case 41:
          m.bos_id = as_int32(v);
          break;
        case 42:
          m.eos_id = as_int32(v);
          break;
        case 43:
          m.pad_id = as_int32(v);
          break;
      }
    } else {
      w.skip(t);
    }
  }
}

void parse_normalizer(const std::string& buf, std::pair<size_t, size_t> r, const std::string& source,
                      SpmModel& m) {
  Wire w(buf, r.first, r.second, source);
  int f, t;
  while (w.tag(f, t)) {
    if (f == 1 && t == 2) {
      auto s = w.bytes();
      m.normalizer_name = buf.substr(s.first, s.second - s.first);
    } else if (f == 2 && t == 2) {
      auto s = w.bytes();
      m.precompiled_charsmap = buf.substr(s.first, s.second - s.first);
    } else if (f >= 3 && f <= 5 && t == 0) {
      bool v = w.varint() != 0;
      if (f == 3) m.add_dummy_prefix = v;
      if (f == 4) m.remove_extra_whitespaces = v;
      if (f == 5) m.escape_whitespaces = v;
    } else {
      w.skip(t);
    }
  }
}

}  // namespace

const char* spm_model_type_name(SpmModelType t) {
  switch (t) {
    case SpmModelType::Unigram:
      return "UNIGRAM";
    case SpmModelType::Bpe:
      return "BPE";
    case SpmModelType::Word:
      return "WORD";
    case SpmModelType::Char:
      return "CHAR";
  }
  return "?";
}

SpmModel parse_sentencepiece_model(const std::string& bytes, const std::string& source) {
  SpmModel m;
  Wire w(bytes, 0, bytes.size(), source);
  int f, t;
  while (w.tag(f, t)) {
    if (f >= 1 && f <= 3) {
      w.expect(t, 2, f, f == 1 ? "pieces" : f == 2 ? "trainer_spec" : "normalizer_spec");
      auto r = w.bytes();
      if (f == 1) parse_piece(bytes, r, source, m);
      if (f == 2) parse_trainer(bytes, r, source, m);
      if (f == 3) parse_normalizer(bytes, r, source, m);
    } else {
      w.skip(t);
    }
  }
  if (m.pieces.empty()) w.fail(0, "no pieces (is this a sentencepiece model?)");
  return m;
}

}  // namespace qtune
