// `qtune bench`: prefill and decode speed of a model folder on random token ids, printed as one JSON line
// (bench/ scripts run it side by side with transformers). The prompt is prefilled in one forward; decode
// then runs greedily for --new-tokens tokens ignoring EOS. Best of --repeat runs after one warm-up. When the
// model runs through DecodeStep, decode_step_ms is that step alone: replayed back to back over the same
// positions with the logits read once at the end, so decode_ms_per_token minus it is what each token's host
// work (the logits' copy, sampling, the launch) adds.
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/commands.h"
#include "cli/device_map_flags.h"
#include "cli/quant_flags.h"
#include "core/allocator.h"
#include "core/error.h"
#include "model/decode_step.h"
#include "model/generate.h"
#include "model/llama_model.h"

namespace qtune::cli {

namespace {

struct BenchArgs {
  std::string model, device = "cuda";
  int prompt_len = 512, new_tokens = 128, repeat = 3;
  DeviceMapFlags dmap;  // --device-map / --max-gpu-memory (CPU offload)
  QuantFlags quant;     // --load-in-4bit / --load-in-8bit
};

int run_bench(const BenchArgs& a) {
  Device dev = a.device == "cpu" ? Device::CPU : Device::CUDA;
  if (dev == Device::CUDA && !cuda_available())
    throw_error(ErrorKind::Unsupported, "--device cuda: no usable GPU");
  LoadOptions lo = a.quant.options();
  lo.device_map = a.dmap.spec();
  if (lo.device_map.enabled() && dev == Device::CPU)
    throw_error(ErrorKind::Usage, "--device-map needs --device cuda (the default)");
  auto t0 = std::chrono::steady_clock::now();
  LlamaModel model = LlamaModel::load(a.model, dev, lo);
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::mt19937 rng(1234);
  std::vector<int32_t> prompt(a.prompt_len);
  for (auto& t : prompt) t = (int32_t)(rng() % (uint32_t)model.config().vocab_size);
  GenerateOptions opt;
  opt.max_new_tokens = a.new_tokens;
  double best_prefill = 1e30, best_decode = 1e30;
  std::string decode_path, decode_note;
  for (int r = 0; r <= a.repeat; r++) {
    GenerateResult res = generate(model, prompt, opt);
    decode_path = res.decode_path;
    decode_note = res.decode_note;
    if (r == 0) continue;  // warm-up
    best_prefill = std::min(best_prefill, res.prefill_seconds);
    if (res.tokens.size() > 1)
      best_decode = std::min(best_decode, res.decode_seconds / (res.tokens.size() - 1));
  }
  double best_step = 0;
  {
    const int64_t P = a.prompt_len;
    KVCache cache = model.make_cache(1, P + a.new_tokens);
    if (DecodeStep::supported(model, cache)) {
      DecodeStep step(model, cache);
      step.run(prompt[0], P).to_f32_vector();  // eager (kernels load), then the capture
      step.run(prompt[1 % P], P + 1).to_f32_vector();
      best_step = 1e30;
      for (int r = 0; r < a.repeat; r++) {
        auto s0 = std::chrono::steady_clock::now();
        for (int i = 0; i < a.new_tokens; i++) step.run(prompt[i % P], P + i);
        step.run(prompt[0], P).to_f32_vector();  // waits for the queued steps
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
        best_step = std::min(best_step, s / (a.new_tokens + 1));
      }
    }
  }
  nlohmann::json j;
  j["impl"] = "qtune";
  j["device"] = placement_name(model);
  if (lo.device_map.enabled()) {
    j["device_map"] = model.device_map().describe();
    j["cpu_layers"] = model.device_map().layers_on(Device::CPU);
  }
  j["prompt_len"] = a.prompt_len;
  j["new_tokens"] = a.new_tokens;
  j["load_seconds"] = load_s;
  j["prefill_tokens_per_s"] = a.prompt_len / best_prefill;
  j["decode_tokens_per_s"] = 1.0 / best_decode;
  j["decode_ms_per_token"] = best_decode * 1e3;
  j["decode_path"] = decode_path;
  if (best_step > 0) j["decode_step_ms"] = best_step * 1e3;
  if (!decode_note.empty()) j["decode_note"] = decode_note;
  if (model.device() == Device::CUDA) j["peak_gpu_bytes"] = device_memory_stats().peak_in_use;
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, Runner& run) {
  auto a = std::make_shared<BenchArgs>();
  auto* cmd = app.add_subcommand("bench", "Measure prefill and decode tokens/s of a model (JSON output)");
  cmd->add_option("--model", a->model, "Model folder")->required();
  a->quant.add_load_flags(cmd);
  cmd->add_option("--device", a->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--prompt-len", a->prompt_len, "Prompt tokens prefilled in one forward (default 512)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--new-tokens", a->new_tokens, "Tokens decoded one at a time (default 128)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--repeat", a->repeat, "Timed runs after one warm-up; the best is reported (default 3)")
      ->check(CLI::PositiveNumber);
  a->dmap.add(cmd);
  cmd->callback([&run, a] { run = [a] { return run_bench(*a); }; });
}

}  // namespace qtune::cli
