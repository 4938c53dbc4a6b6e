// Command-line flags shared by the subcommands that load or write quantized models, turned into
// LoadOptions: transformers' BitsAndBytesConfig names for loading (generate, perplexity), the short
// `qtune quantize` names for writing.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <sstream>
#include <string>

#include "core/error.h"
#include "model/load_options.h"
#include "model/quant_load.h"

namespace qtune::cli {

struct QuantFlags {
  std::string four_bit;                 // "" | nf4 | fp4 (quantize's --4bit)
  bool load_in_4bit = false;            // loading commands' --load-in-4bit
  std::string quant_type_4bit = "nf4";  // with --bnb-4bit-quant-type
  bool eight_bit = false, double_quant = false;
  int64_t blocksize = 64;
  std::string compute_dtype = "float32";
  float threshold = 6.0f;
  std::string skip_modules;                // with --skip-modules; without it transformers' default (lm_head)
  std::vector<CLI::Option*> skip_options;  // the --skip-modules option of the command that parsed
  // transformers' rule (should_convert_module), see skip_quantization.
  static constexpr const char* kSkipModulesHelp =
      "Comma-separated keys of Linear modules kept dense (default lm_head; a list replaces it, so \"\" or a "
      "list without lm_head quantizes lm_head too): a key skips the modules whose name ends with it or that "
      "it "
      "matches as a regex from the start up to a '.' (model.layers.0, model.layers.*.mlp)";

  // Loading commands (generate, perplexity) take transformers' BitsAndBytesConfig names:
  //   --load-in-4bit [--bnb-4bit-quant-type nf4|fp4] [--bnb-4bit-use-double-quant]
  //   [--bnb-4bit-compute-dtype T] | --load-in-8bit [--llm-int8-threshold X], --skip-modules.
  void add_load_flags(CLI::App* cmd) {
    cmd->add_flag("--load-in-4bit", load_in_4bit,
                  "Quantize the decoder Linear weights to 4 bits while loading (bitsandbytes)");
    cmd->add_option("--bnb-4bit-quant-type", quant_type_4bit, "4-bit code book: nf4 (default) or fp4")
        ->check(CLI::IsMember({"nf4", "fp4"}));
    cmd->add_flag("--bnb-4bit-use-double-quant", double_quant, "4-bit: quantize the absmax values too");
    cmd->add_option("--bnb-4bit-compute-dtype", compute_dtype,
                    "4-bit compute dtype: float32, bfloat16 or float16")
        ->check(CLI::IsMember({"float32", "bfloat16", "float16", "f32", "bf16", "f16", "fp16"}));
    cmd->add_option("--bnb-4bit-blocksize", blocksize,
                    "4-bit block size, a power of two in [32, 4096] (default 64)");
    cmd->add_flag("--load-in-8bit", eight_bit,
                  "LLM.int8 quantization of the decoder Linear weights while loading");
    cmd->add_option("--llm-int8-threshold", threshold, "8-bit outlier threshold (default 6.0)");
    skip_options.push_back(cmd->add_option("--skip-modules", skip_modules, kSkipModulesHelp));
  }

  // `qtune quantize`: --4bit nf4|fp4 [--double-quant] [--blocksize N] [--compute-dtype T] | --8bit
  // [--threshold X], --skip-modules.
  void add_quantize_flags(CLI::App* cmd) {
    cmd->add_option("--4bit", four_bit, "4-bit quantization of the decoder Linear weights: nf4 or fp4")
        ->check(CLI::IsMember({"nf4", "fp4"}));
    cmd->add_flag("--8bit", eight_bit, "LLM.int8 quantization of the decoder Linear weights");
    cmd->add_flag("--double-quant", double_quant,
                  "4-bit: quantize the absmax too (bnb_4bit_use_double_quant)");
    cmd->add_option("--blocksize", blocksize, "4-bit block size, a power of two in [32, 4096] (default 64)");
    cmd->add_option("--compute-dtype", compute_dtype, "4-bit compute dtype: float32, bfloat16 or float16")
        ->check(CLI::IsMember({"float32", "bfloat16", "float16", "f32", "bf16", "f16", "fp16"}));
    cmd->add_option("--threshold", threshold, "8-bit outlier threshold (llm_int8_threshold, default 6.0)");
    skip_options.push_back(cmd->add_option("--skip-modules", skip_modules, kSkipModulesHelp));
  }

  LoadOptions options() const {
    const std::string four_bit = load_in_4bit ? quant_type_4bit : this->four_bit;
    LoadOptions o;
    if (!four_bit.empty() && eight_bit) throw_error(ErrorKind::Usage, "choose 4-bit or 8-bit, not both");
    o.load_in_4bit = !four_bit.empty();
    o.load_in_8bit = eight_bit;
    if (o.load_in_4bit) o.quant_type = quant_type_from_name(four_bit, "4-bit quant type");
    o.double_quant = double_quant;
    check_blocksize(blocksize, "--blocksize");
    o.blocksize = blocksize;
    const std::string cd = compute_dtype == "f32"                                ? "float32"
                           : compute_dtype == "bf16"                             ? "bfloat16"
                           : (compute_dtype == "f16" || compute_dtype == "fp16") ? "float16"
                                                                                 : compute_dtype;
    o.compute_dtype = torch_dtype_from_name(cd, "--compute-dtype");
    if (!(threshold >= 0.0f)) throw_error(ErrorKind::Usage, "--threshold must be >= 0");
    o.llm_int8_threshold = threshold;
    bool given = false;
    for (const CLI::Option* opt : skip_options) given = given || opt->count() > 0;
    if (given) {
      o.skip_modules.emplace();
      std::stringstream ss(skip_modules);
      for (std::string m; std::getline(ss, m, ',');)
        if (!m.empty()) o.skip_modules->push_back(m);
    }
    return o;
  }
};

}  // namespace qtune::cli
