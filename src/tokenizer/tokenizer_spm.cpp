// Tokenizer::from_sentencepiece: a Tokenizer built from a SentencePiece tokenizer.model alone.
//
// Default (what transformers' LlamaTokenizer builds from the file, i.e. what HF produces, for BPE and UNIGRAM
// models alike): BPE over all pieces with merges generated from the vocabulary (every split of a piece into
// two pieces; ranked by the piece's id, then shorter left part), byte fallback, no unknown token, no
// normalizer, a Metaspace pre-tokenizer that turns spaces into "▁" and prepends one to the first piece of
// text, the decoder Replace("▁", " ") + ByteFallback + Fuse + Strip(1 leading space); control and unknown
// pieces are special added tokens and user-defined pieces plain added tokens (all matched in the input text).
//
// sentencepiece_semantics: what the sentencepiece library does: its normalizer (spm_normalizer.h: charsmap,
// remove_extra_whitespaces, add_dummy_prefix, escape_whitespaces), BPE merges ranked by piece score or, for
// UNIGRAM models, sentencepiece's Viterbi (unigram_model.h), the unknown piece for characters without byte
// pieces, and control pieces never matched in the text.
#include <algorithm>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/sentencepiece_model.h"
#include "tokenizer/spm_normalizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer/unigram_model.h"

namespace qtune {

namespace {

const char* kSpace = "\xE2\x96\x81";  // ▁

struct MergeCand {
  int32_t piece;  // id of the merged piece
  int left_chars, right_chars;
  std::string left, right;
};

// transformers' generate_merges: every split of every piece into two pieces of the vocabulary.
std::vector<std::pair<std::string, std::string>> generate_merges(
    const SpmModel& m, const std::unordered_map<std::string, int32_t>& vocab, bool by_score) {
  std::vector<MergeCand> cands;
  for (size_t id = 0; id < m.pieces.size(); id++) {
    const std::string& p = m.pieces[id].piece;
    int total = 0;
    for (size_t i = 0; i < p.size();) {
      utf8_next(p, i);
      total++;
    }
    int left_chars = 0;
    size_t i = 0;
    while (i < p.size()) {
      utf8_next(p, i);
      left_chars++;
      if (i >= p.size()) break;
      std::string l = p.substr(0, i), r = p.substr(i);
      if (vocab.count(l) && vocab.count(r))
        cands.push_back({(int32_t)id, left_chars, total - left_chars, l, r});
    }
  }
  if (by_score) {  // score descending, then longer left, longer right; ties keep id order (Python's stable
                   // sort)
    std::stable_sort(cands.begin(), cands.end(), [&](const MergeCand& a, const MergeCand& b) {
      float sa = m.pieces[a.piece].score, sb = m.pieces[b.piece].score;
      if (sa != sb) return sa > sb;
      if (a.left_chars != b.left_chars) return a.left_chars > b.left_chars;
      return a.right_chars > b.right_chars;
    });
  } else {  // piece id, then shorter left, shorter right
    std::stable_sort(cands.begin(), cands.end(), [](const MergeCand& a, const MergeCand& b) {
      if (a.piece != b.piece) return a.piece < b.piece;
      if (a.left_chars != b.left_chars) return a.left_chars < b.left_chars;
      return a.right_chars < b.right_chars;
    });
  }
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(cands.size());
  for (auto& c : cands) merges.emplace_back(std::move(c.left), std::move(c.right));
  return merges;
}

nlohmann::json llama_decoder_json(bool strip_first_space) {  // LlamaTokenizer's decoder
  nlohmann::json seq = nlohmann::json::array();
  seq.push_back({{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}});
  seq.push_back({{"type", "ByteFallback"}});
  seq.push_back({{"type", "Fuse"}});
  if (strip_first_space) seq.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  return {{"type", "Sequence"}, {"decoders", seq}};
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_sentencepiece(const std::string& bytes,
                                                         const std::string& config_json,
                                                         const std::string& source,
                                                         const TokenizerOptions& opts) {
  SpmModel m = parse_sentencepiece_model(bytes, source);
  bool spm = opts.sentencepiece_semantics;
  if (m.model_type == SpmModelType::Word || m.model_type == SpmModelType::Char)
    throw_error(ErrorKind::Unsupported, source, ": sentencepiece model type ",
                spm_model_type_name(m.model_type), " is not supported (BPE and UNIGRAM are)");
  if (m.treat_whitespace_as_suffix)
    throw_error(ErrorKind::Unsupported, source, ": treat_whitespace_as_suffix models are not supported");

  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(m.pieces.size());
  for (size_t i = 0; i < m.pieces.size(); i++)
    if (!vocab.emplace(m.pieces[i].piece, (int32_t)i).second)
      throw_error(ErrorKind::Format, source, ": piece \"", m.pieces[i].piece, "\" appears twice (ids ",
                  vocab[m.pieces[i].piece], " and ", i, ")");
  bool unigram_viterbi = spm && m.model_type == SpmModelType::Unigram;
  std::vector<std::pair<std::string, std::string>> merges;
  if (!unigram_viterbi) merges = generate_merges(m, vocab, spm);
  BpeOptions bo;
  bo.fuse_unk = true;
  bo.byte_fallback = spm ? m.byte_fallback : true;
  bool unk_ok = m.unk_id >= 0 && m.unk_id < (int)m.pieces.size();
  if (spm && unk_ok) {
    bo.has_unk = true;
    bo.unk_token = m.pieces[m.unk_id].piece;
  }
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->sentencepiece_semantics_ = spm;
  if (unigram_viterbi) {
    std::vector<std::pair<std::string, double>> pieces;
    SpmUnigramRules rules;
    for (const SpmPiece& p : m.pieces) {
      pieces.emplace_back(p.piece, p.score);
      rules.piece_types.push_back((int)p.type);
    }
    t->model_ = std::make_unique<UnigramModel>(std::move(pieces), unk_ok ? m.unk_id : -1, m.byte_fallback,
                                               source, &rules);
  } else {
    t->model_ = std::make_unique<BpeModel>(std::move(vocab), merges, bo, source);
  }

  if (!spm && unk_ok) {  // transformers adds unk_token first, as a special token
    AddedToken a;
    a.id = m.unk_id;
    a.content = m.pieces[m.unk_id].piece;
    a.special = true;
    t->added_.add(a);
  }
  for (size_t i = 0; i < m.pieces.size(); i++) {
    SpmPieceType ty = m.pieces[i].type;
    if (ty != SpmPieceType::Control && ty != SpmPieceType::UserDefined &&
        !(spm && ty == SpmPieceType::Unknown))
      continue;
    AddedToken a;
    a.id = (int32_t)i;
    a.content = m.pieces[i].piece;
    a.special =
        ty == SpmPieceType::Control || (ty == SpmPieceType::Unknown && !spm);  // (spm shows unk as " ⁇ ")
    a.in_text = !(spm && ty != SpmPieceType::UserDefined);
    t->added_.add(a);
  }
  if (spm) {
    t->normalizer_ = make_spm_normalizer(m, source);
  } else {
    t->pre_tokenizer_ = make_metaspace_pre_tokenizer(kSpace, "first", false);
  }
  if (spm)
    t->decoder_ = make_sentencepiece_decoder(unk_ok ? m.pieces[m.unk_id].piece : std::string(),
                                             m.add_dummy_prefix, m.remove_extra_whitespaces);
  else
    t->decoder_ = make_decoder(llama_decoder_json(true), source);
  auto id_if = [&](int id) { return id >= 0 && id < (int)m.pieces.size() ? id : -1; };
  t->bos_id_ = id_if(m.bos_id);
  t->eos_id_ = id_if(m.eos_id);
  t->pad_id_ = id_if(m.pad_id);
  t->post_processor_ = make_affix_post_processor({}, {});
  t->refresh_added();
  if (!config_json.empty()) t->apply_config(config_json, source + " (config)", true);
  return t;
}

}  // namespace qtune
