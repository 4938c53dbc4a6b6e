// SFT datasets: reading rows from a file, rendering them to text segments, tokenizing them into
// (ids, labels) examples with TRL's conventions.
//
// Accepted files (one format per file, decided by the first row):
//   *.jsonl  one JSON object per line with  {"text": ...}
//                                        or {"prompt": ..., "completion": ...}
//                                        or {"messages": [{"role": ..., "content": ...}, ...]}
//                                        or the Alpaca fields below
//   *.json   a JSON array of such objects (Alpaca files: {"instruction", "input", "output"})
// Alpaca rows become prompt/completion with this prompt format (the input section only when non-empty):
//   "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"  →  completion {output}
// Chat rows are rendered with the tokenizer's chat_template (train/chat_template.h); the assistant
// turns are the "completion" part.
//
// Every example ends with EOS (appended unless the text already ends with it) and EOS is trained on.
// With completion_only_loss the prompt / non-assistant tokens get label −100. Labels here are unshifted
// (label[t] is the token at t, or −100); the collator shifts them.
// Errors name the file and line (or array element): invalid JSON, missing or non-string fields, an empty
// dataset.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace qtune {

struct TextSegment {
  std::string text;
  bool trained = true;  // false: masked under completion_only_loss
};

struct SftRow {
  std::string where;  // "data.jsonl:12" for errors
  std::vector<TextSegment> segments;
  bool add_special_tokens = true;  // false for chat rows: the template writes BOS itself
};

struct SftExample {
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;  // unshifted; −100 = not trained
};

// Reads every row and renders it to segments. chat_template: the tokenizer's (needed only for
// "messages" rows; empty → ErrorKind::Config naming the row). bos/eos: the token strings the template
// sees as bos_token / eos_token.
std::vector<SftRow> read_sft_rows(const std::string& path, const std::string& chat_template,
                                  const std::string& bos_token, const std::string& eos_token);

// The Alpaca prompt for one row (documented above).
std::string alpaca_prompt(const std::string& instruction, const std::string& input);

struct TokenizeOptions {
  bool completion_only_loss = false;
  int64_t max_seq_length = 1024;  // longer examples are truncated (counted in *truncated)
};

// Tokenizes rows: the first segment with the tokenizer's special tokens (BOS), the rest without, then
// EOS. Rows whose every label would be −100 after truncation are dropped (counted in *dropped).
std::vector<SftExample> tokenize_rows(const std::vector<SftRow>& rows, const Tokenizer& tok,
                                      const TokenizeOptions& opts, int64_t* truncated, int64_t* dropped);

}  // namespace qtune
