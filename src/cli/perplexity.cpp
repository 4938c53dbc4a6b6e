// `qtune perplexity`: perplexity of a model folder on a text file, optionally quantizing while loading
// (--load-in-4bit [--bnb-4bit-quant-type nf4|fp4] [--bnb-4bit-use-double-quant] | --load-in-8bit).
//
// Protocol (the same as tools/eval_bundled_model.py and bench/quant_ppl.py): ids = tokenizer(text) with
// special tokens (BOS); windows of `context` tokens (default: the model's max_position_embeddings) starting
// every `stride` tokens (default: context, i.e. non-overlapping chunks); each window is its own sequence from
// position 0 and scores only the tokens no earlier window scored (with stride = context: tokens 1..len-1 of
// each chunk). Perplexity = exp(total NLL / scored tokens), NLL from f32 logits, log-softmax in f64.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/device_map_flags.h"
#include "cli/quant_flags.h"
#include "model/llama_model.h"
#include "tokenizer/tokenizer.h"

namespace qtune::cli {

namespace {

struct PplArgs {
  std::string model, file;
  int64_t context = 0, stride = 0, max_tokens = 0;
  bool json = false;
  QuantFlags q;
  DeviceMapFlags dmap;  // --device-map: the GPU with CPU offload instead of the CPU alone
};

int run_perplexity(const PplArgs& a) {
  std::ifstream f(a.file, std::ios::binary);
  if (!f) throw_error(ErrorKind::Io, "cannot open --file ", a.file);
  std::ostringstream ss;
  ss << f.rdbuf();
  auto tok = Tokenizer::load(a.model);
  LoadOptions lo = a.q.options();
  lo.device_map = a.dmap.spec();
  LlamaModel m = LlamaModel::load(a.model, Device::CPU, lo);
  if (lo.device_map.enabled()) print_device_map(m);
  std::vector<int32_t> ids = tok->encode(ss.str(), true);
  if (a.max_tokens > 0 && (int64_t)ids.size() > a.max_tokens) ids.resize((size_t)a.max_tokens);
  const int64_t n = (int64_t)ids.size();
  const int64_t ctx = a.context > 0 ? a.context : m.config().max_position_embeddings;
  const int64_t stride = a.stride > 0 ? a.stride : ctx;
  if (ctx < 2 || stride > ctx)
    throw_error(ErrorKind::Usage, "perplexity: need context >= 2 and stride <= context (got ", ctx, ", ",
                stride, ")");
  if (n < 2) throw_error(ErrorKind::Usage, a.file, ": fewer than 2 tokens");
  const int64_t V = m.config().vocab_size;
  double nll = 0;
  int64_t scored = 0, windows = 0, prev_end = 0;
  for (int64_t begin = 0; begin < n - 1; begin += stride) {
    const int64_t end = std::min(begin + ctx, n), L = end - begin;
    if (L < 2) break;
    std::vector<int32_t> w(ids.begin() + begin, ids.begin() + end);
    const std::vector<float> logits = m.forward(Tensor::from_i32(w, {1, L})).to_f32_vector();  // [L·V]
    for (int64_t t = std::max(begin + 1, prev_end); t < end; t++) {  // token t predicted at row t-1
      const float* row = logits.data() + (t - 1 - begin) * V;
      double mx = row[0];
      for (int64_t v = 1; v < V; v++) mx = std::max(mx, (double)row[v]);
      double se = 0;
      for (int64_t v = 0; v < V; v++) se += std::exp((double)row[v] - mx);
      nll += mx + std::log(se) - row[ids[(size_t)t]];
      scored++;
    }
    prev_end = end;
    windows++;
    if (end == n) break;
  }
  const double mean = nll / (double)scored;
  if (a.json)
    std::printf(
        "{\"nll\": %.6f, \"perplexity\": %.4f, \"tokens\": %lld, \"scored\": %lld, \"windows\": %lld, "
        "\"context\": %lld, \"stride\": %lld}\n",
        mean, std::exp(mean), (long long)n, (long long)scored, (long long)windows, (long long)ctx,
        (long long)stride);
  else
    std::printf(
        "perplexity %.4f (%.4f nats/token) over %lld scored tokens of %lld; %lld windows, context %lld, "
        "stride %lld\n",
        std::exp(mean), mean, (long long)scored, (long long)n, (long long)windows, (long long)ctx,
        (long long)stride);
  return 0;
}

}  // namespace

void add_perplexity_command(CLI::App& app, Runner& run) {
  auto a = std::make_shared<PplArgs>();
  auto* cmd =
      app.add_subcommand("perplexity", "Perplexity of a model folder on a text file (CPU, or --device-map)");
  cmd->add_option("--model", a->model, "Model folder")->required();
  cmd->add_option("--file", a->file, "UTF-8 text file")->required();
  cmd->add_option("--context", a->context, "Window length in tokens (default max_position_embeddings)");
  cmd->add_option("--stride", a->stride, "Window step in tokens (default: the context, non-overlapping)");
  cmd->add_option("--max-tokens", a->max_tokens, "Use only the first N tokens of the file");
  cmd->add_flag("--json", a->json, "Print one JSON line");
  a->q.add_load_flags(cmd);
  a->dmap.add(cmd);
  cmd->callback([&run, a] { run = [a] { return run_perplexity(*a); }; });
}

}  // namespace qtune::cli
