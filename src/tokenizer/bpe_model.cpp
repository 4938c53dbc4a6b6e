// HF BPE model: see bpe_model.h.
#include "tokenizer/bpe_model.h"

#include <nlohmann/json.hpp>
#include <queue>

#include "core/error.h"
#include "tokenizer/json_util.h"
#include "tokenizer/unicode.h"

namespace qtune {

using json = nlohmann::json;

namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

}  // namespace

BpeModel::BpeModel(std::unordered_map<std::string, int32_t> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions opts,
                   const std::string& source)
    : vocab_(std::move(vocab)), opts_(std::move(opts)) {
  int32_t max_id = -1;
  for (auto& kv : vocab_) {
    if (kv.second < 0)
      throw_error(ErrorKind::Format, source, ": vocab token \"", kv.first, "\" has a negative id");
    max_id = std::max(max_id, kv.second);
  }
  id_to_token_.assign(max_id + 1, std::string());
  has_id_.assign(max_id + 1, false);
  for (auto& kv : vocab_) {
    id_to_token_[kv.second] = kv.first;
    has_id_[kv.second] = true;
  }
  size_t plen = opts_.continuing_subword_prefix.size();
  merges_.reserve(merges.size() * 2);
  for (size_t r = 0; r < merges.size(); r++) {
    const auto& m = merges[r];
    auto a = vocab_.find(m.first), b = vocab_.find(m.second);
    if (a == vocab_.end() || b == vocab_.end())
      throw_error(ErrorKind::Format, source, ": merge ", r, " (\"", m.first, "\" \"", m.second,
                  "\") names token \"", a == vocab_.end() ? m.first : m.second,
                  "\" that is not in the vocab");
    std::string right = m.second;
    if (plen && right.compare(0, plen, opts_.continuing_subword_prefix) == 0) right = right.substr(plen);
    auto c = vocab_.find(m.first + right);
    if (c == vocab_.end())
      throw_error(ErrorKind::Format, source, ": merge ", r, " (\"", m.first, "\" \"", m.second,
                  "\") makes \"", m.first + right, "\" that is not in the vocab");
    merges_.emplace(pair_key(a->second, b->second), std::make_pair((int32_t)r, c->second));
  }
  if (opts_.has_unk) {
    auto u = vocab_.find(opts_.unk_token);
    if (u == vocab_.end())
      throw_error(ErrorKind::Format, source, ": unk_token \"", opts_.unk_token, "\" is not in the vocab");
    unk_id_ = u->second;
  }
  for (int b = 0; b < 256; b++) {
    static const char* hex = "0123456789ABCDEF";
    std::string t = "<0x";
    t += hex[b >> 4];
    t += hex[b & 15];
    t += '>';
    auto it = vocab_.find(t);
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
}

std::unique_ptr<BpeModel> BpeModel::from_json(const json& m, const std::string& source) {
  std::unordered_map<std::string, int32_t> vocab;
  const json& v = m.at("vocab");
  if (!v.is_object()) throw_error(ErrorKind::Format, source, ": model.vocab must be an object {token: id}");
  vocab.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) vocab.emplace(it.key(), it.value().get<int32_t>());
  std::vector<std::pair<std::string, std::string>> merges;
  if (m.contains("merges")) {
    const json& ms = m.at("merges");
    merges.reserve(ms.size());
    for (size_t i = 0; i < ms.size(); i++) {
      const json& e = ms[i];
      if (e.is_string()) {
        std::string s = e.get<std::string>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          throw_error(ErrorKind::Format, source, ": merge ", i, " \"", s,
                      "\" is not two tokens separated by a space");
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else if (e.is_array() && e.size() == 2) {
        merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      } else {
        throw_error(ErrorKind::Format, source, ": merge ", i, " must be \"a b\" or [\"a\", \"b\"], got ",
                    e.dump());
      }
    }
  }
  BpeOptions o;
  auto str_or_empty = [&](const char* k) {
    return m.contains(k) && m.at(k).is_string() ? m.at(k).get<std::string>() : std::string();
  };
  if (m.contains("unk_token") && m.at("unk_token").is_string()) {
    o.has_unk = true;
    o.unk_token = m.at("unk_token").get<std::string>();
  }
  o.fuse_unk = json_bool(m, "fuse_unk", false);
  o.byte_fallback = json_bool(m, "byte_fallback", false);
  o.ignore_merges = json_bool(m, "ignore_merges", false);
  o.continuing_subword_prefix = str_or_empty("continuing_subword_prefix");
  o.end_of_word_suffix = str_or_empty("end_of_word_suffix");
  if (m.contains("dropout") && m.at("dropout").is_number() && m.at("dropout").get<double>() > 0)
    throw_error(ErrorKind::Unsupported, source, ": BPE dropout is not supported (encoding would be random)");
  return std::make_unique<BpeModel>(std::move(vocab), merges, std::move(o), source);
}

void BpeModel::set_options(const BpeOptions& o, const std::string& source) {
  int32_t unk = -1;
  if (o.has_unk) {
    auto u = vocab_.find(o.unk_token);
    if (u == vocab_.end())
      throw_error(ErrorKind::Format, source, ": unk_token \"", o.unk_token, "\" is not in the vocab");
    unk = u->second;
  }
  opts_.has_unk = o.has_unk;
  opts_.unk_token = o.unk_token;
  opts_.fuse_unk = o.fuse_unk;
  opts_.byte_fallback = o.byte_fallback;
  opts_.ignore_merges = o.ignore_merges;
  unk_id_ = unk;
  std::lock_guard<std::mutex> lock(cache_mu_);
  cache_.clear();
}

const std::string* BpeModel::id_to_token(int id) const {
  if (id < 0 || id >= (int)id_to_token_.size() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

int BpeModel::token_to_id(const std::string& tok) const {
  auto it = vocab_.find(tok);
  return it == vocab_.end() ? -1 : it->second;
}

void BpeModel::tokenize(const std::string& word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (opts_.ignore_merges) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (word.size() > kCacheMaxWordBytes) return;  // (SentencePiece-style models see whole texts as one word)
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (cache_.size() < kCacheCapacity) cache_.emplace(word, std::move(ids));
}

void BpeModel::merge_word(const std::string& w, std::vector<int32_t>& out) const {
  struct Sym {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  auto add = [&](int32_t id) {
    int n = (int)syms.size();
    syms.push_back({id, n - 1, -1, true});
    if (n > 0) syms[n - 1].next = n;
  };
  // Characters -> initial symbols.
  bool have_unk = false;  // a pending (possibly fused) unknown
  size_t i = 0;
  while (i < w.size()) {
    size_t b = i;
    utf8_next(w, i);
    std::string s = w.substr(b, i - b);
    if (b != 0 && !opts_.continuing_subword_prefix.empty()) s = opts_.continuing_subword_prefix + s;
    if (i >= w.size() && !opts_.end_of_word_suffix.empty()) s += opts_.end_of_word_suffix;
    auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      if (have_unk) add(unk_id_), have_unk = false;
      add(it->second);
      continue;
    }
    if (opts_.byte_fallback) {
      bool all = true;
      for (unsigned char c : s) all = all && byte_ids_[c] >= 0;
      if (all) {
        for (unsigned char c : s) add(byte_ids_[c]);  // (HF emits a pending unknown only after these)
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (have_unk && !opts_.fuse_unk) add(unk_id_);
      have_unk = true;
    }
  }
  if (have_unk) add(unk_id_);

  // Merge: a min-heap of (rank, position) candidates; stale entries are skipped when popped.
  struct Cand {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand> heap;
  auto lookup = [&](int a, int b) -> const std::pair<int32_t, int32_t>* {
    auto it = merges_.find(pair_key(syms[a].id, syms[b].id));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (int k = 0; k + 1 < (int)syms.size(); k++)
    if (auto m = lookup(k, k + 1)) heap.push({m->first, k, m->second});
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    Sym& s = syms[c.pos];
    if (!s.alive || s.next < 0) continue;
    auto m = lookup(c.pos, s.next);
    if (!m || m->second != c.new_id) continue;
    int nx = s.next;
    s.id = c.new_id;
    syms[nx].alive = false;
    s.next = syms[nx].next;
    if (s.next >= 0) syms[s.next].prev = c.pos;
    if (s.prev >= 0)
      if (auto p = lookup(s.prev, c.pos)) heap.push({p->first, s.prev, p->second});
    if (s.next >= 0)
      if (auto n = lookup(c.pos, s.next)) heap.push({n->first, c.pos, n->second});
  }
  for (int k = syms.empty() ? -1 : 0; k >= 0; k = syms[k].next) out.push_back(syms[k].id);
}

}  // namespace qtune
