// Tokenizer: loading tokenizer.json / tokenizer_config.json, and HF's encode/decode pipeline. See
// tokenizer.h. The tokenizer.model path is in tokenizer_spm.cpp, the streaming decoder in stream_decoder.cpp.
#include "tokenizer/tokenizer.h"

#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/decoder.h"
#include "tokenizer/json_util.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer/unigram_model.h"

namespace qtune {

using json = nlohmann::json;

namespace {

bool file_exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw_error(ErrorKind::Io, "cannot open ", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw_error(ErrorKind::Io, "cannot read ", path);
  return ss.str();
}

json parse_json(const std::string& text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    // nlohmann's message carries "at line L, column C".
    throw_error(ErrorKind::Format, source, ": malformed JSON: ", e.what());
  }
}

// A token field of tokenizer_config.json: "text", {"content": "text", ...} or null.
std::string token_field(const json& cfg, const char* key) {
  if (!cfg.contains(key)) return "";
  const json& v = cfg.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string())
    return v.at("content").get<std::string>();
  return "";
}

// An added token as tokenizer.json's added_tokens and tokenizer_config.json's added_tokens_decoder write it.
AddedToken parse_added_token(const json& a, int32_t id) {
  AddedToken at;
  at.id = id;
  at.content = a.at("content").get<std::string>();
  at.special = json_bool(a, "special", false);
  at.lstrip = json_bool(a, "lstrip", false);
  at.rstrip = json_bool(a, "rstrip", false);
  at.normalized = json_bool(a, "normalized", !at.special);
  at.single_word = json_bool(a, "single_word", false);
  return at;
}

}  // namespace

std::string clean_up_tokenization(std::string s) {
  static const char* pairs[][2] = {{" .", "."},     {" ?", "?"},     {" !", "!"},   {" ,", ","},
                                   {" ' ", "'"},    {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"},
                                   {" 've", "'ve"}, {" 're", "'re"}};
  for (auto& p : pairs) s = replace_all(s, p[0], p[1]);
  return s;
}

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path, const TokenizerOptions& opts) {
  std::string dir = path, json_path, model_path;
  if (file_exists(path)) {  // a tokenizer.json or tokenizer.model given directly
    size_t slash = path.find_last_of('/');
    dir = slash == std::string::npos ? "." : path.substr(0, slash);
    (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0 ? json_path : model_path) = path;
  } else if (dir_exists(path)) {
    if (file_exists(path + "/tokenizer.json"))
      json_path = path + "/tokenizer.json";
    else if (file_exists(path + "/tokenizer.model"))
      model_path = path + "/tokenizer.model";
    else
      throw_error(ErrorKind::Io, "no tokenizer.json or tokenizer.model in ", path);
  } else {
    throw_error(ErrorKind::Io, "tokenizer path ", path, " does not exist");
  }
  std::string cfg_path = dir + "/tokenizer_config.json";
  std::string cfg = file_exists(cfg_path) ? read_file(cfg_path) : "";
  if (!json_path.empty()) {
    auto t = from_json(read_file(json_path), "", json_path);
    if (!cfg.empty()) t->apply_config(cfg, cfg_path, false);
    return t;
  }
  auto t = from_sentencepiece(read_file(model_path), "", model_path, opts);
  if (!cfg.empty()) t->apply_config(cfg, cfg_path, true);
  return t;
}

std::unique_ptr<Tokenizer> Tokenizer::from_json(const std::string& text, const std::string& config_json,
                                                const std::string& source) {
  json j = parse_json(text, source);
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->from_json_ = true;
  t->byte_level_json_ = text.find("\"ByteLevel\"") != std::string::npos;
  try {
    if (!j.is_object()) throw_error(ErrorKind::Format, source, ": top level must be a JSON object");
    if (!j.contains("model")) throw_error(ErrorKind::Format, source, ": no \"model\"");
    const json& m = j.at("model");
    std::string type = m.value("type", std::string(m.contains("merges") ? "BPE" : ""));
    if (type == "BPE")
      t->model_ = BpeModel::from_json(m, source);
    else if (type == "Unigram")
      t->model_ = UnigramModel::from_json(m, source);
    else
      throw_error(ErrorKind::Unsupported, source, ": model type \"", type,
                  "\" is not supported (supported: BPE, Unigram; WordPiece and WordLevel are not)");
    if (j.contains("added_tokens") && !j.at("added_tokens").is_null()) {
      for (const json& a : j.at("added_tokens")) {
        AddedToken at = parse_added_token(a, a.at("id").get<int32_t>());
        if (at.id < 0)
          throw_error(ErrorKind::Format, source, ": added token \"", at.content, "\" has a negative id");
        t->added_.add(at);
        t->has_normalized_added_ = t->has_normalized_added_ || at.normalized;
      }
    }
    auto get = [&](const char* k) -> const json& {
      static const json null_json;
      return j.contains(k) ? j.at(k) : null_json;
    };
    t->normalizer_ = make_normalizer(get("normalizer"), source);
    t->pre_tokenizer_ = make_pre_tokenizer(get("pre_tokenizer"), source);
    t->post_processor_ = make_post_processor(get("post_processor"), source);
    t->decoder_ = make_decoder(get("decoder"), source);
  } catch (const json::exception& e) {  // a field of the wrong type or missing
    throw_error(ErrorKind::Format, source, ": ", e.what());
  }
  t->refresh_added();
  if (!config_json.empty()) t->apply_config(config_json, source + " (config)", false);
  return t;
}

void Tokenizer::apply_config(const std::string& config_json, const std::string& source,
                             bool set_post_processor) {
  json c = parse_json(config_json, source);
  if (!c.is_object()) throw_error(ErrorKind::Format, source, ": top level must be a JSON object");
  try {
    // Tokens the config declares that the tokenizer file lacks (e.g. a <pad> added to a tokenizer.model).
    if (c.contains("added_tokens_decoder") && c.at("added_tokens_decoder").is_object()) {
      for (auto& kv : c.at("added_tokens_decoder").items()) {
        const json& a = kv.value();
        AddedToken at;
        try {
          at.id = std::stoi(kv.key());
        } catch (const std::exception&) {
          throw_error(ErrorKind::Format, source, ": added_tokens_decoder key \"", kv.key(),
                      "\" is not an id");
        }
        at = parse_added_token(a, at.id);
        const AddedToken* have = added_.find_id(at.id);
        if (at.id < 0 || (have && have->content == at.content)) continue;
        if (!have && model_->id_to_token(at.id) && *model_->id_to_token(at.id) != at.content)
          throw_error(ErrorKind::Format, source, ": added_tokens_decoder gives id ", at.id, " to \"",
                      at.content, "\", which the vocabulary holds as \"", *model_->id_to_token(at.id), "\"");
        if (sentencepiece_semantics_ && model_->id_to_token(at.id)) continue;  // the model's own pieces
        added_.add(at);
        has_normalized_added_ = has_normalized_added_ || at.normalized;
      }
    }
    auto id_of = [&](const char* key, int current) {
      std::string tok = token_field(c, key);
      if (tok.empty()) return current;
      int id = token_to_id(tok);
      return id >= 0 ? id : current;
    };
    bos_id_ = id_of("bos_token", bos_id_);
    eos_id_ = id_of("eos_token", eos_id_);
    pad_id_ = id_of("pad_token", pad_id_);
    if (c.contains("chat_template") && c.at("chat_template").is_string())
      chat_template_ = c.at("chat_template").get<std::string>();
    // transformers ignores clean_up_tokenization_spaces for BPE models (it would eat spaces before
    // punctuation) unless told otherwise.
    clean_up_spaces_ =
        json_bool(c, "clean_up_tokenization_spaces", false) &&
        (!dynamic_cast<BpeModel*>(model_.get()) ||
         json_bool(c, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", false));
    std::string cls = c.contains("tokenizer_class") && c.at("tokenizer_class").is_string()
                          ? c.at("tokenizer_class").get<std::string>()
                          : "";
    const json& aps = c.contains("add_prefix_space") ? c.at("add_prefix_space") : json();
    if (!cls.empty())
      apply_tokenizer_class(
          cls, aps.is_boolean() ? (int)aps.get<bool>() : -1,
          c.contains("legacy") && c.at("legacy").is_boolean() && c.at("legacy").get<bool>());
    if (set_post_processor) {
      std::vector<int32_t> pre, post;
      if (json_bool(c, "add_bos_token", false) && bos_id_ >= 0) pre.push_back(bos_id_);
      if (json_bool(c, "add_eos_token", false) && eos_id_ >= 0) post.push_back(eos_id_);
      post_processor_ = make_affix_post_processor(pre, post);
    }
    refresh_added();
  } catch (const json::exception& e) {
    throw_error(ErrorKind::Format, source, ": ", e.what());
  }
}

void Tokenizer::refresh_added() {
  std::function<void(std::string&)> norm;
  if (normalizer_) norm = [this](std::string& s) { normalizer_->normalize(s); };
  added_.set_normalizer(norm);
}

void Tokenizer::encode_text(const std::string& piece, bool at_start, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  std::vector<PreToken> words{{piece, at_start}};
  if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(words);
  for (const PreToken& w : words) model_->tokenize(w.text, out);
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  size_t bad = find_invalid_utf8(text);
  if (bad != std::string::npos)
    throw_error(ErrorKind::Format, "tokenizer input is not valid UTF-8: bad byte 0x", std::hex,
                (int)(unsigned char)text[bad], std::dec, " at byte offset ", bad);
  std::vector<int32_t> ids;
  for (const TextSplit& sp : added_.split(text, false)) {
    if (sp.id >= 0) {
      ids.push_back(sp.id);
      continue;
    }
    std::string s = sp.text;
    if (normalizer_) normalizer_->normalize(s);
    bool at_start = sp.offset == 0;
    if (!has_normalized_added_) {
      encode_text(s, at_start, ids);
      continue;
    }
    for (const TextSplit& sub : added_.split(s, true)) {
      if (sub.id >= 0)
        ids.push_back(sub.id);
      else
        encode_text(sub.text, at_start && sub.offset == 0, ids);
    }
  }
  if (add_special_tokens && post_processor_) post_processor_->process(ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::string out = decode_raw(ids, skip_special_tokens);
  return clean_up_spaces_ ? clean_up_tokenization(out) : out;
}

std::string Tokenizer::decode_raw(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const AddedToken* a = added_.find_id(id);
    if (a) {
      if (skip_special_tokens && a->special) continue;
      tokens.push_back(a->surface);
      continue;
    }
    const std::string* t = model_->id_to_token(id);
    if (t) tokens.push_back(*t);  // ids without a token are skipped, as HF does
  }
  std::string out;
  if (decoder_) {
    decoder_->decode_chain(tokens);
    for (auto& t : tokens) out += t;
  } else {
    for (size_t i = 0; i < tokens.size(); i++) out += (i ? " " : "") + tokens[i];
  }
  return out;
}

int Tokenizer::vocab_size() const {
  int n = model_->vocab_size();
  for (const AddedToken& a : added_.tokens()) n = std::max(n, a.id + 1);
  return n;
}

std::string Tokenizer::id_to_token(int id) const {
  if (const AddedToken* a = added_.find_id(id)) return a->surface;
  const std::string* t = model_->id_to_token(id);
  return t ? *t : std::string();
}

int Tokenizer::token_to_id(const std::string& tok) const {
  if (const AddedToken* a = added_.find_content(tok)) return a->id;
  return model_->token_to_id(tok);
}

bool Tokenizer::is_special(int id) const {
  const AddedToken* a = added_.find_id(id);
  return a && a->special;
}

}  // namespace qtune
