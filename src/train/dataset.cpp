// SFT dataset reading and tokenization (see dataset.h).
#include "train/dataset.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_util.h"
#include "train/chat_template.h"

namespace qtune {
namespace {

using nlohmann::json;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

const std::string& string_field(const json& row, const char* key, const std::string& where) {
  auto it = row.find(key);
  if (it == row.end()) throw_error(ErrorKind::Format, where, ": missing field \"", key, "\"");
  if (!it->is_string())
    throw_error(ErrorKind::Format, where, ": field \"", key, "\" must be a string, got ",
                json_type_name(*it));
  return it->get_ref<const std::string&>();
}

SftRow render_row(const json& row, const std::string& where, const std::string& chat_template,
                  const std::string& bos, const std::string& eos) {
  if (!row.is_object())
    throw_error(ErrorKind::Format, where, ": expected a JSON object, got ", json_type_name(row));
  SftRow r;
  r.where = where;
  if (row.contains("messages")) {
    const json& m = row["messages"];
    if (!m.is_array() || m.empty())
      throw_error(ErrorKind::Format, where, ": \"messages\" must be a non-empty array of {role, content}");
    for (size_t i = 0; i < m.size(); ++i) {
      const std::string w = where + " messages[" + std::to_string(i) + "]";
      if (!m[i].is_object()) throw_error(ErrorKind::Format, w, ": expected an object with role and content");
      string_field(m[i], "role", w);
      string_field(m[i], "content", w);
    }
    if (chat_template.empty())
      throw_error(
          ErrorKind::Config, where,
          ": chat \"messages\" need a chat_template in the model's tokenizer_config.json, and it has none");
    r.segments = render_chat_segments(chat_template, m, bos, eos, where);
    r.add_special_tokens = false;
  } else if (row.contains("text")) {
    r.segments.push_back({string_field(row, "text", where), true});
  } else if (row.contains("prompt") || row.contains("completion")) {
    r.segments.push_back({string_field(row, "prompt", where), false});
    r.segments.push_back({string_field(row, "completion", where), true});
  } else if (row.contains("instruction") || row.contains("output")) {
    std::string input;
    if (row.contains("input") && !row["input"].is_null()) input = string_field(row, "input", where);
    r.segments.push_back({alpaca_prompt(string_field(row, "instruction", where), input), false});
    r.segments.push_back({string_field(row, "output", where), true});
  } else {
    throw_error(ErrorKind::Format, where,
                ": a row needs \"text\", \"prompt\"+\"completion\", \"messages\" or Alpaca's "
                "\"instruction\"+\"output\" (has none of them)");
  }
  return r;
}

}  // namespace

std::string alpaca_prompt(const std::string& instruction, const std::string& input) {
  std::string p = "### Instruction:\n" + instruction + "\n\n";
  if (!input.empty()) p += "### Input:\n" + input + "\n\n";
  return p + "### Response:\n";
}

std::vector<SftRow> read_sft_rows(const std::string& path, const std::string& chat_template,
                                  const std::string& bos_token, const std::string& eos_token) {
  const std::string text = read_text_file(path, ErrorKind::Io);
  std::vector<SftRow> rows;
  size_t first = text.find_first_not_of(" \t\r\n");
  if (ends_with(path, ".json") || (first != std::string::npos && text[first] == '[')) {
    json arr;
    try {
      arr = json::parse(text);
    } catch (const json::parse_error& e) {
      throw_error(ErrorKind::Format, path, ": invalid JSON (", e.what(), ")");
    }
    if (!arr.is_array()) throw_error(ErrorKind::Format, path, ": a .json dataset must be an array of rows");
    for (size_t i = 0; i < arr.size(); ++i)
      rows.push_back(
          render_row(arr[i], path + " [" + std::to_string(i) + "]", chat_template, bos_token, eos_token));
  } else {
    size_t pos = 0;
    int64_t line_no = 0;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      std::string line = text.substr(pos, end - pos);
      pos = end + 1;
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = path + ":" + std::to_string(line_no);
      json row;
      try {
        row = json::parse(line);
      } catch (const json::parse_error& e) {
        throw_error(ErrorKind::Format, where, ": invalid JSON (", e.what(), ")");
      }
      rows.push_back(render_row(row, where, chat_template, bos_token, eos_token));
    }
  }
  if (rows.empty()) throw_error(ErrorKind::Format, path, ": the dataset is empty (no rows)");
  return rows;
}

std::vector<SftExample> tokenize_rows(const std::vector<SftRow>& rows, const Tokenizer& tok,
                                      const TokenizeOptions& opts, int64_t* truncated, int64_t* dropped) {
  if (tok.eos_id() < 0) throw_error(ErrorKind::Config, "the tokenizer has no EOS token; SFT needs one");
  if (opts.max_seq_length < 2) throw_error(ErrorKind::Usage, "--max-seq-length must be >= 2");
  std::vector<SftExample> out;
  int64_t n_trunc = 0, n_drop = 0;
  for (const SftRow& r : rows) {
    SftExample ex;
    for (size_t i = 0; i < r.segments.size(); ++i) {
      std::vector<int32_t> ids =
          tok.encode(r.segments[i].text, /*add_special_tokens=*/i == 0 && r.add_special_tokens);
      const bool train = r.segments[i].trained || !opts.completion_only_loss;
      for (int32_t id : ids) {
        ex.ids.push_back(id);
        ex.labels.push_back(train ? id : -100);
      }
    }
    if (ex.ids.empty() || ex.ids.back() != tok.eos_id()) {
      ex.ids.push_back(tok.eos_id());
      ex.labels.push_back(tok.eos_id());
    }
    if ((int64_t)ex.ids.size() > opts.max_seq_length) {
      ex.ids.resize(opts.max_seq_length);
      ex.labels.resize(opts.max_seq_length);
      ++n_trunc;
    }
    bool any = false;  // a trained target exists (positions ≥ 1: the first token is never predicted)
    for (size_t t = 1; t < ex.labels.size(); ++t) any = any || ex.labels[t] != -100;
    if (!any) {
      ++n_drop;
      continue;
    }
    out.push_back(std::move(ex));
  }
  if (truncated) *truncated = n_trunc;
  if (dropped) *dropped = n_drop;
  return out;
}

}  // namespace qtune
