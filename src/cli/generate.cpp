// `qtune generate`: load a model folder, encode the prompt, generate with streaming output.
// Sampling defaults follow transformers: without --temperature, generation_config.json decides
// (do_sample false → greedy); --temperature 0 is always greedy.
#include "model/generate.h"

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>

#include "cli/commands.h"
#include "cli/device_map_flags.h"
#include "cli/quant_flags.h"
#include "core/allocator.h"
#include "core/error.h"
#include "model/generation_config.h"
#include "model/llama_model.h"
#include "peft/peft_adapter.h"
#include "peft/prompt_adapter.h"
#include "tokenizer/tokenizer.h"

namespace qtune::cli {

namespace {

struct GenerateArgs {
  std::string model, prompt, prompt_file, device = "auto", adapter;
  int max_new_tokens = 128;
  float temperature = -1, top_p = -1;
  int top_k = -1;
  uint64_t seed = 0;
  bool no_stream = false, no_special = false, quiet = false, ignore_eos = false;
  QuantFlags quant;     // --load-in-4bit / --load-in-8bit
  DeviceMapFlags dmap;  // --device-map / --max-gpu-memory (CPU offload)
};

Device pick_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") {
    if (!cuda_available())
      throw_error(ErrorKind::Unsupported, "--device cuda: no usable GPU (run `qtune env` for details)");
    return Device::CUDA;
  }
  return cuda_available() ? Device::CUDA : Device::CPU;
}

int run_generate(const GenerateArgs& a) {
  std::string prompt = a.prompt;
  if (!a.prompt_file.empty()) {
    std::ifstream f(a.prompt_file, std::ios::binary);
    if (!f) throw_error(ErrorKind::Io, "cannot open --prompt-file ", a.prompt_file);
    std::ostringstream ss;
    ss << f.rdbuf();
    prompt = ss.str();
  }
  if (a.max_new_tokens < 0) throw_error(ErrorKind::Usage, "--max-new-tokens must be >= 0");
  LoadOptions lo = a.quant.options();
  lo.device_map = a.dmap.spec();
  if (lo.device_map.enabled() && a.device != "auto")
    throw_error(ErrorKind::Usage, "--device-map places the modules itself; leave out --device");
  Device dev = lo.device_map.enabled() ? Device::CPU : pick_device(a.device);  // a map picks its own
  auto tok = Tokenizer::load(a.model);
  LlamaModel model = LlamaModel::load(a.model, dev, lo);
  dev = model.device();
  if (lo.device_map.enabled() && !a.quiet) print_device_map(model);
  if (!a.adapter.empty() && model.device_map().split())
    throw_error(ErrorKind::Unsupported, "--adapter with a model split between the GPU and the CPU ",
                "(--device-map) is not supported; place every module on one device");
  std::unique_ptr<PeftAdapter> adapter;  // an adapter folder (LoRA, IA3, bottleneck: by its peft_type)
  // Prompt / P- / prefix tuning and LLaMA-Adapter load as PromptAdapters (generate() takes the virtual
  // tokens).
  if (!a.adapter.empty())
    adapter = is_prompt_adapter_folder(a.adapter) ? load_prompt_adapter(model, a.adapter)
                                                  : load_peft_adapter(model, a.adapter);
  GenerationConfig gc = load_generation_config(a.model, model.config());

  GenerateOptions opt;
  opt.max_new_tokens = a.max_new_tokens;
  if (!a.ignore_eos) opt.eos_token_ids = gc.eos_token_ids;
  opt.sampling.temperature = a.temperature >= 0 ? a.temperature : (gc.do_sample ? gc.temperature : 0.0f);
  opt.sampling.top_k = a.top_k >= 0 ? a.top_k : (gc.do_sample ? gc.top_k : 0);
  opt.sampling.top_p = a.top_p >= 0 ? a.top_p : (gc.do_sample ? gc.top_p : 1.0f);
  opt.sampling.seed = a.seed;
  if (opt.sampling.top_p <= 0 || opt.sampling.top_p > 1)
    throw_error(ErrorKind::Usage, "--top-p must be in (0, 1]");

  std::vector<int32_t> ids = tok->encode(prompt, !a.no_special);
  if (ids.empty())
    throw_error(ErrorKind::Usage, "the prompt encodes to no tokens; give a non-empty --prompt");

  StreamDecoder stream(*tok, /*skip_special_tokens=*/true);
  if (!a.no_stream) {
    std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    std::fflush(stdout);
    opt.on_token = [&](int32_t t) {
      std::string piece = stream.push(t);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    };
  }
  GenerateResult r = generate(model, ids, opt);
  if (a.no_stream) {
    std::string text = tok->decode(r.tokens, true);
    std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    std::fwrite(text.data(), 1, text.size(), stdout);
  } else {
    std::string rest = stream.finish();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
  }
  std::printf("\n");
  if (!a.quiet) {
    size_t n = r.tokens.size();
    std::fprintf(
        stderr,
        "[%s | prompt %zu tokens, %.1f tok/s prefill | %zu new tokens, %.1f tok/s decode | stop: %s]\n",
        placement_name(model).c_str(), ids.size(),
        r.prefill_seconds > 0 ? ids.size() / r.prefill_seconds : 0.0, n,
        (n > 1 && r.decode_seconds > 0) ? (n - 1) / r.decode_seconds : 0.0, stop_reason_name(r.stop));
  }
  return 0;
}

}  // namespace

void add_generate_command(CLI::App& app, Runner& run) {
  auto a = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand("generate", "Generate text from a prompt with a Hugging Face model folder");
  cmd->add_option("--model", a->model, "Model folder (config.json, *.safetensors, tokenizer files)")
      ->required();
  auto* p = cmd->add_option("--prompt", a->prompt, "Prompt text");
  auto* pf = cmd->add_option("--prompt-file", a->prompt_file, "Read the prompt from a file");
  p->excludes(pf);
  cmd->add_option("--adapter", a->adapter,
                  "Adapter folder (adapter_config.json + adapter_model.safetensors): PEFT LoRA, IA3, prompt, "
                  "P- or prefix tuning, LLaMA-Adapter, or qtune's bottleneck adapters");
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Stop after this many new tokens (default 128)");
  cmd->add_option("--temperature", a->temperature, "0 = greedy; default from generation_config.json");
  cmd->add_option("--top-k", a->top_k, "Keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", a->top_p, "Nucleus sampling: keep the smallest set with probability >= p");
  cmd->add_option("--seed", a->seed, "Random seed for sampling (default 0)");
  cmd->add_option("--device", a->device, "cpu, cuda or auto (GPU when usable)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_flag("--no-stream", a->no_stream, "Print the text at the end instead of token by token");
  cmd->add_flag("--no-special-tokens", a->no_special, "Encode the prompt without BOS");
  cmd->add_flag("--ignore-eos", a->ignore_eos, "Do not stop at EOS");
  cmd->add_flag("--quiet", a->quiet, "Do not print the speed summary on stderr");
  a->quant.add_load_flags(cmd);
  a->dmap.add(cmd);
  cmd->callback([&run, a, p, pf] {
    if (p->count() == 0 && pf->count() == 0) throw CLI::RequiredError("--prompt or --prompt-file");
    run = [a] { return run_generate(*a); };
  });
}

}  // namespace qtune::cli
