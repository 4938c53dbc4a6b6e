// `qtune quantize`: a dense Hugging Face model folder -> a bitsandbytes-layout quantized folder (4-bit NF4 /
// FP4 with optional double quant, or LLM.int8) that transformers and qtune load without options.
#include <cstdio>

#include "cli/commands.h"
#include "cli/quant_flags.h"
#include "model/quantize_folder.h"

namespace qtune::cli {

void add_quantize_command(CLI::App& app, Runner& run) {
  struct Args {
    std::string model, out, device = "cpu";
    QuantFlags q;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("quantize", "Quantize a model folder to bitsandbytes 4-bit or 8-bit layout");
  cmd->add_option("--model", a->model, "Dense model folder (config.json, *.safetensors)")->required();
  cmd->add_option("--out", a->out, "Output folder")->required();
  a->q.add_quantize_flags(cmd);
  cmd->add_option("--device", a->device,
                  "Where to quantize, whose bytes to write: cpu (default; what bitsandbytes writes on the CPU) "
                  "or cuda (what it writes on a GPU, transformers' usual path; the two differ in a few codes)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->callback([&run, a] {
    run = [a] {
      LoadOptions o = a->q.options();
      if (!o.quantized()) throw_error(ErrorKind::Usage, "quantize: give --4bit nf4|fp4 or --8bit");
      QuantizeReport r =
          quantize_model_folder(a->model, a->out, o, a->device == "cuda" ? Device::CUDA : Device::CPU);
      std::fprintf(stderr, "quantized %lld tensors, copied %lld; %.1f MB -> %.1f MB in %d file(s) under %s\n",
                   (long long)r.quantized_tensors, (long long)r.copied_tensors, r.bytes_in / 1e6,
                   r.bytes_out / 1e6, r.shards, a->out.c_str());
      return 0;
    };
  });
}

}  // namespace qtune::cli
