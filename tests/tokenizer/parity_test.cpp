// Parity with Hugging Face: every string of tests/fixtures/tokenizer/strings.json (>= 2,000: edge cases,
// random mixtures, slices of real text) is encoded (with and without special tokens), decoded (with and
// without skip_special_tokens) and stream-decoded by each fixture tokenizer, and compared with what the real
// Python tokenizers/transformers (or sentencepiece) produced (tools/make_tokenizer_fixtures.py). Mismatches
// are counted and the first few printed with the strings and both id lists.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tokenizer/tokenizer.h"

using json = nlohmann::json;
using namespace qtune;

namespace {

const std::string kDir = std::string(QTUNE_FIXTURES) + "/tokenizer/";

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const std::vector<std::string>& strings() {
  static std::vector<std::string> s =
      json::parse(slurp(kDir + "strings.json")).get<std::vector<std::string>>();
  return s;
}

std::string show_ids(const std::vector<int32_t>& v, size_t max = 40) {
  std::string s = "[";
  for (size_t i = 0; i < v.size() && i < max; i++) s += (i ? " " : "") + std::to_string(v[i]);
  if (v.size() > max) s += " ... (" + std::to_string(v.size()) + " ids)";
  return s + "]";
}

std::string show_str(const std::string& s) {
  json j = s.size() > 160 ? s.substr(0, 160) + "..." : s;
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Loads the tokenizer an expected_<name>.json names: its dir, with "patch" keys substituted into the JSON.
std::unique_ptr<Tokenizer> load_for(const json& e, const std::string& dir_override,
                                    const TokenizerOptions& opts) {
  std::string dir = kDir + (dir_override.empty() ? e.at("dir").get<std::string>() : dir_override);
  bool tokenizers_lib = e.at("reference") == "tokenizers";  // the tokenizers library on tokenizer.json alone
  if (e.at("patch").is_null()) {
    if (tokenizers_lib)
      return Tokenizer::from_json(slurp(dir + "/tokenizer.json"), "", dir + "/tokenizer.json");
    return Tokenizer::load(dir, opts);
  }
  const json& cfg = e.at("patch").at("config");
  struct stat st;
  if (stat((dir + "/tokenizer.json").c_str(), &st) != 0)  // a tokenizer.model folder with another config
    return Tokenizer::from_sentencepiece(slurp(dir + "/tokenizer.model"), cfg.dump(),
                                         dir + "/tokenizer.model", opts);
  json tj = json::parse(slurp(dir + "/tokenizer.json"));
  for (auto& kv : e.at("patch").at("patch").items()) tj[kv.key()] = kv.value();
  return Tokenizer::from_json(tj.dump(), cfg.is_null() ? "" : cfg.dump(), dir + "/tokenizer.json (patched)");
}

struct Counts {
  size_t enc = 0, enc_plain = 0, dec = 0, dec_skip = 0, stream = 0, checked = 0;
  std::vector<std::string> first;
  size_t total() const { return enc + enc_plain + dec + dec_skip + stream; }
};

void note(Counts& c, size_t& counter, const std::string& msg) {
  counter++;
  if (c.first.size() < 6) c.first.push_back(msg);
}

void run_parity(const std::string& name, const std::string& dir_override = "", TokenizerOptions opts = {},
                bool all_strings = true) {
  json e = json::parse(slurp(kDir + "expected_" + name + ".json"));
  auto tok = load_for(e, dir_override, opts);
  const auto& S = strings();
  const json& cases = e.at("cases");
  // Variants of a tokenizer cover the first strings only (the edge cases), the main ones all of them.
  ASSERT_LE(cases.size(), S.size()) << "expected_" << name << ".json does not match strings.json";
  ASSERT_GE(cases.size(), 600u);
  if (all_strings) {
    ASSERT_EQ(cases.size(), S.size()) << "expected_" << name << ".json does not cover strings.json";
    ASSERT_GE(S.size(), 2000u);
  }
  Counts c;
  for (size_t i = 0; i < cases.size(); i++) {
    const json& k = cases[i];
    std::vector<int32_t> want_plain = k[1].get<std::vector<int32_t>>(), want = want_plain;
    if (k[0].is_object()) {
      auto pre = k[0].at("prefix").get<std::vector<int32_t>>(),
           suf = k[0].at("suffix").get<std::vector<int32_t>>();
      want.insert(want.begin(), pre.begin(), pre.end());
      want.insert(want.end(), suf.begin(), suf.end());
    } else {
      want = k[0].get<std::vector<int32_t>>();
    }
    std::string where = name + " #" + std::to_string(i) + " " + show_str(S[i]);
    std::vector<int32_t> got = tok->encode(S[i], true), got_plain = tok->encode(S[i], false);
    if (got != want)
      note(c, c.enc, where + "\n    encode:  got " + show_ids(got) + "\n             want " + show_ids(want));
    if (got_plain != want_plain)
      note(c, c.enc_plain,
           where + "\n    encode(no special): got " + show_ids(got_plain) + "\n             want " +
               show_ids(want_plain));
    c.checked++;
    std::string d = tok->decode(want, false), ds = tok->decode(want, true);
    std::string want_d = k[2].is_null() ? S[i] : k[2].get<std::string>();
    std::string want_ds = k[3].is_null() ? S[i] : k[3].get<std::string>();
    bool full = e.at("reference") != "sentencepiece";  // (sentencepiece never shows control pieces)
    if (full && i < 500 && d != want_d)
      note(c, c.dec, where + "\n    decode: got " + show_str(d) + " want " + show_str(want_d));
    if (ds != want_ds)
      note(c, c.dec_skip,
           where + "\n    decode(skip special): got " + show_str(ds) + " want " + show_str(want_ds));
    // Streaming: the pieces concatenate to decode() and each piece is whole UTF-8.
    StreamDecoder sd(*tok, true);
    std::string streamed;
    bool pieces_ok = true;
    for (int32_t id : want) {
      std::string p = sd.push(id);
      for (size_t b = 0; b < p.size(); b++)
        pieces_ok = pieces_ok && !(b == 0 && ((unsigned char)p[0] & 0xC0) == 0x80);
      streamed += p;
    }
    streamed += sd.finish();
    if (streamed != ds || !pieces_ok)
      note(c, c.stream, where + "\n    stream decode: got " + show_str(streamed) + " want " + show_str(ds));
  }
  std::printf(
      "[parity] %-16s %zu strings: encode %zu, encode(no special) %zu, decode %zu, decode(skip) %zu, "
      "stream %zu mismatches\n",
      name.c_str(), c.checked, c.enc, c.enc_plain, c.dec, c.dec_skip, c.stream);
  std::string detail;
  for (auto& f : c.first) detail += "  " + f + "\n";
  EXPECT_EQ(c.total(), 0u) << "first mismatches:\n" << detail;
}

}  // namespace

TEST(TokenizerParity, Gpt2) {
  run_parity("gpt2");
}
TEST(TokenizerParity, Qwen2StyleOverGpt2Vocab) {
  run_parity("qwen2_style");
}
TEST(TokenizerParity, RobertaStyleOverGpt2Vocab) {
  run_parity("roberta_style", "", {}, false);
}
TEST(TokenizerParity, Llama3Style) {
  run_parity("llama3_style");
}
TEST(TokenizerParity, Llama2FromTokenizerModel) {
  run_parity("llama2", "llama2_model");
}
TEST(TokenizerParity, Llama2FromTokenizerJson) {
  run_parity("llama2", "llama2_json");
}
TEST(TokenizerParity, Llama2LegacyTokenizerJson) {
  run_parity("llama2_legacy");
}
TEST(TokenizerParity, Llama2LegacyTokenizerJsonWithoutConfig) {
  run_parity("llama2_legacy_tokenizers", "", {}, false);
}
TEST(TokenizerParity, Llama2SentencepieceSemantics) {
  TokenizerOptions o;
  o.sentencepiece_semantics = true;
  run_parity("llama2_spm", "", o);
}
// The 2k model is a Unigram model; transformers' LlamaTokenizer still loads it as BPE over its pieces.
TEST(TokenizerParity, SentencePiece2kUnigramModel) {
  run_parity("sp2k_model");
}
// The same model as the tokenizers library converts it: Unigram (Viterbi) with the nmt_nfkc charsmap.
TEST(TokenizerParity, SentencePiece2kUnigramTokenizerJson) {
  run_parity("sp2k_unigram");
}
// ... and as the sentencepiece library runs it (nmt_nfkc charsmap by longest match, extra whitespace removed,
// sentencepiece's Viterbi).
TEST(TokenizerParity, SentencePiece2kUnigramSentencepieceSemantics) {
  TokenizerOptions o;
  o.sentencepiece_semantics = true;
  run_parity("sp2k_spm", "", o);
}
// Pre-tokenizer and merge-format variants of llama3_style, against the tokenizers library.
TEST(TokenizerParity, SplitBehaviors) {
  run_parity("llama3_split_behaviors", "", {}, false);
}
TEST(TokenizerParity, SplitRemovedInvertedDigitsPrefixSpace) {
  run_parity("llama3_split_removed_invert", "", {}, false);
}
TEST(TokenizerParity, WhitespaceSplitAndInvertedStringSplit) {
  run_parity("llama3_whitespace_split", "", {}, false);
}
TEST(TokenizerParity, MergesAsStrings) {
  run_parity("llama3_string_merges", "", {}, false);
}
// BPE with continuing_subword_prefix, end_of_word_suffix, an unknown token, and the BPEDecoder.
TEST(TokenizerParity, SubwordPrefixSuffixUnknown) {
  run_parity("subword_bpe", "", {}, false);
}
// clean_up_tokenization_spaces in the config: applied to Unigram models, ignored for BPE (transformers 5).
TEST(TokenizerParity, CleanUpSpacesIgnoredForBpe) {
  run_parity("llama3_cleanup", "", {}, false);
}
TEST(TokenizerParity, CleanUpSpacesAppliedForUnigram) {
  run_parity("sp2k_unigram_cleanup", "", {}, false);
}
TEST(TokenizerParity, SequencePostProcessor) {
  run_parity("llama3_sequence_post_processor", "", {}, false);
}
// Metaspace pre-tokenizer and decoder variants (prepend_scheme always with split, never).
TEST(TokenizerParity, MetaspaceAlwaysSplit) {
  run_parity("llama2_metaspace_always_split", "", {}, false);
}
TEST(TokenizerParity, MetaspaceNever) {
  run_parity("llama2_metaspace_never", "", {}, false);
}
// tokenizer.model plus a config whose added_tokens_decoder adds <pad> (special) and <extra> (lstrip).
TEST(TokenizerParity, AddedTokensFromConfig) {
  run_parity("llama2_added_tokens", "", {}, false);
}
// tokenizer_config.json classes that rebuild the pipeline around the GPT-2 vocabulary, as transformers does:
// GPT2Tokenizer with add_prefix_space, Qwen2Tokenizer (NFC + Qwen2's regex), and LlamaTokenizerFast over a
// byte-level tokenizer.json (transformers then keeps the file's pipeline).
TEST(TokenizerParity, ClassGpt2AddPrefixSpace) {
  run_parity("gpt2_class_gpt2_prefix_space", "", {}, false);
}
TEST(TokenizerParity, ClassQwen2OverGpt2Json) {
  run_parity("gpt2_class_qwen2", "", {}, false);
}
TEST(TokenizerParity, ClassLlamaOverByteLevelJson) {
  run_parity("gpt2_class_llama_byte_level", "", {}, false);
}
// A normalizer that rewrites a normalized added token: HF matches the token's normalized form.
TEST(TokenizerParity, NormalizedAddedTokenMatchesNormalForm) {
  run_parity("llama3_normalized_added", "", {}, false);
}
