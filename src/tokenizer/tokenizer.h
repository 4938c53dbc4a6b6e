// Text <-> token ids exactly as Hugging Face tokenizers / transformers do it, for the Llama family and
// friends: byte-level BPE (GPT-2, Llama 3, Qwen2) and SentencePiece-style BPE (Llama 2, Mistral) from
// tokenizer.json, or from a SentencePiece tokenizer.model alone (parsed by sentencepiece_model.h, no protobuf
// dependency); and Unigram tokenizer.json files (converted SentencePiece Unigram models, with their
// Precompiled charsmap normalizer).
//
// Encoding follows HF's pipeline: added tokens are split out of the raw text, the pieces between them are
// normalized, pre-tokenized into words, each word goes through the model (BPE or Unigram), the post-processor
// adds BOS/EOS when add_special_tokens is set. Decoding maps ids to token strings and runs the decoder chain.
// Input text must be valid UTF-8 (Python strings cannot hold anything else): encode() throws
// ErrorKind::Format naming the byte offset of the first bad byte.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/added_vocab.h"

namespace qtune {

class Normalizer;
class PreTokenizer;
class TokenModel;
class PostProcessor;
class Decoder;

struct TokenizerOptions {
  // For a folder with only tokenizer.model: false (default) builds what transformers' LlamaTokenizer builds
  // from it (Metaspace pre-tokenizer prepending "▁" to the first piece only, merges ranked by piece id, no
  // unknown token; a UNIGRAM model's pieces are used the same way); true follows the sentencepiece library
  // instead (its normalizer with the dummy "▁" prefix and the charsmap, merges ranked by piece score or
  // Viterbi for UNIGRAM models, the unknown piece for characters without byte fallback), which for Llama 2
  // is also what the legacy tokenizer.json files of the meta-llama repositories encode.
  bool sentencepiece_semantics = false;
};

class Tokenizer {
 public:
  // Loads dir/tokenizer.json (preferred) or dir/tokenizer.model, plus dir/tokenizer_config.json when present
  // (add_bos_token, add_eos_token, bos/eos/pad/unk tokens, added_tokens_decoder entries the tokenizer file
  // lacks, clean_up_tokenization_spaces, chat_template).
  // Like transformers, a config naming tokenizer_class LlamaTokenizer, GPT2Tokenizer or Qwen2Tokenizer
  // replaces the normalizer, pre-tokenizer, decoder and model options of tokenizer.json with that class's
  // own (see transformers_classes.cpp). Without a config, tokenizer.json is followed as the tokenizers
  // library follows it.
  // Errors (ErrorKind::Io for missing files, Format for malformed ones with line/column or byte offset,
  // Unsupported for component types not implemented) name the file.
  static std::unique_ptr<Tokenizer> load(const std::string& dir, const TokenizerOptions& opts = {});
  // The same from in-memory JSON text (config_json may be empty). source_name is used in error messages.
  static std::unique_ptr<Tokenizer> from_json(const std::string& tokenizer_json,
                                              const std::string& config_json, const std::string& source_name);
  // From a tokenizer.model's bytes.
  static std::unique_ptr<Tokenizer> from_sentencepiece(const std::string& model_bytes,
                                                       const std::string& config_json,
                                                       const std::string& source_name,
                                                       const TokenizerOptions& opts = {});
  ~Tokenizer();

  std::vector<int32_t> encode(const std::string& text, bool add_special_tokens = true) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;
  // decode() before transformers' clean_up_tokenization_spaces step, and whether that step is on.
  std::string decode_raw(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;
  bool cleans_up_spaces() const { return clean_up_spaces_; }

  int vocab_size() const;  // one past the largest id of the model vocabulary and the added tokens
  int bos_id() const { return bos_id_; }  // -1 when none
  int eos_id() const { return eos_id_; }
  int pad_id() const { return pad_id_; }
  std::string id_to_token(int id) const;          // "" when the id has no token
  int token_to_id(const std::string& tok) const;  // -1 when absent
  bool is_special(int id) const;
  const std::vector<AddedToken>& added_tokens() const { return added_.tokens(); }
  const std::string& chat_template() const { return chat_template_; }

 private:
  Tokenizer();
  void apply_config(const std::string& config_json, const std::string& source, bool set_post_processor);
  // transformers' tokenizer classes that rebuild the pipeline (transformers_classes.cpp). add_prefix_space:
  // -1 when the config does not say.
  void apply_tokenizer_class(const std::string& cls, int add_prefix_space, bool legacy);
  void encode_text(const std::string& piece, bool at_start, std::vector<int32_t>& out) const;
  void refresh_added();  // after the normalizer or the added tokens change

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<TokenModel> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  AddedVocab added_;
  bool has_normalized_added_ = false;
  bool sentencepiece_semantics_ = false;
  bool from_json_ = false;        // loaded from tokenizer.json
  bool byte_level_json_ = false;  // and that file mentions "ByteLevel"
  bool clean_up_spaces_ = false;
  int bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
  std::string chat_template_;
};

// transformers' clean_up_tokenization: " ." -> "." and the like (applied in this order).
std::string clean_up_tokenization(std::string s);

// Incremental detokenizer for streaming generation. push(id) returns the text completed by that id: never a
// partial UTF-8 character (bytes are held until their character completes), and the concatenation of all
// push() results followed by finish() equals decode() of the whole sequence.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special_tokens = false);
  std::string push(int32_t id);
  std::string finish();  // whatever is still held (e.g. an incomplete character at the end, as U+FFFD)
  void reset();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t prefix_ = 0, read_ = 0;  // ids_[prefix_, read_) is the context already emitted
  std::string prefix_text_;       // decode_raw(ids_[prefix_, read_))
  std::string pending_;           // raw text not emitted yet because clean-up may still change it
};

}  // namespace qtune
