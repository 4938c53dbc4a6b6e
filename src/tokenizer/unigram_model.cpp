// HF Unigram model: see unigram_model.h.
#include "tokenizer/unigram_model.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/json_util.h"
#include "tokenizer/unicode.h"

namespace qtune {

UnigramModel::UnigramModel(std::vector<std::pair<std::string, double>> pieces, int unk_id, bool byte_fallback,
                           const std::string& source, const SpmUnigramRules* spm)
    : pieces_(std::move(pieces)), unk_id_(unk_id), byte_fallback_(byte_fallback) {
  if (pieces_.empty()) throw_error(ErrorKind::Format, source, ": Unigram vocab is empty");
  if (unk_id_ >= (int)pieces_.size())
    throw_error(ErrorKind::Format, source, ": Unigram unk_id ", unk_id_, " is outside the vocab (",
                pieces_.size(), " pieces)");
  double min_score = pieces_[0].second;
  if (spm) {
    if (spm->piece_types.size() != pieces_.size())
      throw_error(ErrorKind::Internal, source, ": piece types and pieces differ in number");
    spm_ = true;
    types_ = spm->piece_types;
    float lo = 3.4e38f, hi = -3.4e38f;
    for (size_t i = 0; i < pieces_.size(); i++) {
      if (types_[i] != 1) continue;
      lo = std::min(lo, (float)pieces_[i].second);
      hi = std::max(hi, (float)pieces_[i].second);
    }
    min_score = lo;
    max_score_ = hi;
  }
  trie_.emplace_back();
  for (size_t i = 0; i < pieces_.size(); i++) {
    const std::string& p = pieces_[i].first;
    if (!spm_) min_score = std::min(min_score, pieces_[i].second);
    ids_.emplace(p, (int32_t)i);                             // the first of duplicate pieces wins the lookup
    if (spm_ && types_[i] != 1 && types_[i] != 4) continue;  // sentencepiece's lattice: normal, user-defined
    int node = 0;
    for (unsigned char c : p) {
      auto it = trie_[node].next.find(c);
      if (it == trie_[node].next.end()) {
        trie_.emplace_back();
        int n = (int)trie_.size() - 1;
        trie_[node].next[c] = n;
        node = n;
      } else {
        node = it->second;
      }
    }
    if (trie_[node].id < 0) trie_[node].id = (int)i;
  }
  unk_score_ = spm_ ? (double)((float)min_score - 10.0f) : min_score - 10.0;
}

std::unique_ptr<UnigramModel> UnigramModel::from_json(const nlohmann::json& m, const std::string& source) {
  std::vector<std::pair<std::string, double>> pieces;
  const nlohmann::json& v = m.at("vocab");
  if (!v.is_array())
    throw_error(ErrorKind::Format, source, ": Unigram vocab must be a list of [piece, score]");
  pieces.reserve(v.size());
  for (size_t i = 0; i < v.size(); i++) {
    if (!v[i].is_array() || v[i].size() != 2)
      throw_error(ErrorKind::Format, source, ": Unigram vocab entry ", i, " must be [piece, score], got ",
                  v[i].dump());
    pieces.emplace_back(v[i][0].get<std::string>(), v[i][1].get<double>());
  }
  int unk = m.contains("unk_id") && m.at("unk_id").is_number_integer() ? m.at("unk_id").get<int>() : -1;
  return std::make_unique<UnigramModel>(std::move(pieces), unk, json_bool(m, "byte_fallback", false), source);
}

const std::string* UnigramModel::id_to_token(int id) const {
  return id >= 0 && id < (int)pieces_.size() ? &pieces_[id].first : nullptr;
}

int UnigramModel::token_to_id(const std::string& tok) const {
  auto it = ids_.find(tok);
  return it == ids_.end() ? -1 : it->second;
}

void UnigramModel::tokenize(const std::string& s, std::vector<int32_t>& out) const {
  if (s.empty()) return;
  // best[e]: the best segmentation of s[0, e): score, start of its last piece, that piece's id.
  struct Best {
    double score = 0;
    long start = -1;
    int id = -1;
  };
  std::vector<Best> best(s.size() + 1);
  best[0].start = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = pos;
    utf8_next(s, next);
    size_t char_len = next - pos;
    double here = best[pos].score;
    bool single = false;
    int node = 0;
    for (size_t k = pos; k < s.size(); k++) {
      auto it = trie_[node].next.find((unsigned char)s[k]);
      if (it == trie_[node].next.end()) break;
      node = it->second;
      int id = trie_[node].id;
      if (id < 0) continue;
      size_t end = k + 1;
      double score = pieces_[id].second;
      if (spm_ && types_[id] == 4) score = (float)((end - pos) * max_score_ - 0.1);
      double cand = spm_ ? (double)((float)score + (float)here) : here + score;
      if (best[end].start < 0 || cand > best[end].score) best[end] = {cand, (long)pos, id};
      if (end - pos == char_len) single = true;
    }
    if (!single) {
      if (unk_id_ < 0)
        throw_error(ErrorKind::Unsupported,
                    "Unigram model: no piece covers a character and the model has no unk_id");
      double cand = spm_ ? (double)((float)unk_score_ + (float)here) : here + unk_score_;
      if (best[next].start < 0 || cand > best[next].score) best[next] = {cand, (long)pos, unk_id_};
    }
    pos = next;
  }
  // Backtrack, fusing runs of unknown pieces into one segment.
  std::vector<std::pair<std::string, bool>> segs;  // (text, is_unknown)
  std::string unk_run;
  for (size_t e = s.size(); e > 0;) {
    const Best& b = best[e];
    std::string piece = s.substr(b.start, e - b.start);
    if (unk_id_ >= 0 && b.id == unk_id_) {
      unk_run.insert(0, piece);
    } else {
      if (!unk_run.empty()) segs.emplace_back(std::move(unk_run), true), unk_run.clear();
      segs.emplace_back(std::move(piece), false);
    }
    e = b.start;
  }
  if (!unk_run.empty()) segs.emplace_back(std::move(unk_run), true);
  std::reverse(segs.begin(), segs.end());
  static const char* hex = "0123456789ABCDEF";
  for (auto& sg : segs) {
    auto it = ids_.find(sg.first);
    if (it != ids_.end()) {
      out.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      std::vector<int32_t> bytes;
      for (unsigned char c : sg.first) {
        std::string t = std::string("<0x") + hex[c >> 4] + hex[c & 15] + ">";
        auto b = ids_.find(t);
        if (b == ids_.end()) break;
        bytes.push_back(b->second);
      }
      if (bytes.size() == sg.first.size()) {
        out.insert(out.end(), bytes.begin(), bytes.end());
        continue;
      }
    }
    if (unk_id_ < 0) throw_error(ErrorKind::Unsupported, "Unigram model: an unknown segment and no unk_id");
    out.push_back(unk_id_);
  }
}

}  // namespace qtune
