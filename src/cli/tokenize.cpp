// `qtune tokenize`: text → ids as a JSON array (what HF's tokenizer.encode gives), or --decode ids → text.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace qtune::cli {

namespace {

struct TokenizeArgs {
  std::string model, text, file;
  bool decode = false, no_special = false, skip_special = false;
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw_error(ErrorKind::Io, "cannot open ", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int run_tokenize(const TokenizeArgs& a) {
  std::string input = a.file.empty() ? a.text : read_file(a.file);
  auto tok = Tokenizer::load(a.model);
  if (!a.decode) {
    std::vector<int32_t> ids = tok->encode(input, !a.no_special);
    std::printf("%s\n", nlohmann::json(ids).dump().c_str());
    return 0;
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(input);
  } catch (const nlohmann::json::parse_error& e) {
    throw_error(ErrorKind::Usage, "--decode expects a JSON array of token ids: ", e.what());
  }
  if (!j.is_array()) throw_error(ErrorKind::Usage, "--decode expects a JSON array of token ids");
  std::vector<int32_t> ids;
  for (size_t i = 0; i < j.size(); i++) {
    if (!j[i].is_number_integer())
      throw_error(ErrorKind::Usage, "--decode: element ", i, " is not an integer: ", j[i].dump());
    long long v = j[i].get<long long>();
    if (v < 0 || v >= tok->vocab_size())
      throw_error(ErrorKind::Usage, "--decode: id ", v, " at index ", i, " is outside the vocabulary (size ",
                  tok->vocab_size(), ")");
    ids.push_back((int32_t)v);
  }
  std::string text = tok->decode(ids, a.skip_special);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::printf("\n");
  return 0;
}

}  // namespace

void add_tokenize_command(CLI::App& app, Runner& run) {
  auto a = std::make_shared<TokenizeArgs>();
  auto* cmd = app.add_subcommand("tokenize", "Encode text to token ids (JSON array), or decode ids to text");
  cmd->add_option("--model", a->model, "Model folder with tokenizer.json or tokenizer.model")->required();
  auto* text = cmd->add_option("--text", a->text, "Text to encode (or, with --decode, a JSON array of ids)");
  auto* file = cmd->add_option("--file", a->file, "Read the text (or ids) from this file");
  text->excludes(file);
  cmd->add_flag("--decode", a->decode, "Decode a JSON array of ids back to text");
  cmd->add_flag("--no-special-tokens", a->no_special, "Encode without BOS/EOS (add_special_tokens=False)");
  cmd->add_flag("--skip-special-tokens", a->skip_special, "Decode without special tokens");
  cmd->callback([&run, a, text, file] {
    if (text->count() == 0 && file->count() == 0) throw CLI::RequiredError("--text or --file");
    run = [a] { return run_tokenize(*a); };
  });
}

}  // namespace qtune::cli
