// Command-line flags shared by the subcommands that load or write quantized models (generate,
// perplexity, quantize): --load-in-4bit / --4bit nf4|fp4, --double-quant, --blocksize, --compute-dtype,
// --load-in-8bit / --8bit, --threshold, --skip-modules, turned into LoadOptions.
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
  std::string four_bit;  // "" | nf4 | fp4
  bool eight_bit = false, double_quant = false;
  int64_t blocksize = 64;
  std::string compute_dtype = "float32";
  float threshold = 6.0f;
  std::string skip_modules = "lm_head";

  // four_flag: "--4bit" (quantize) or "--load-in-4bit" (generate, perplexity); likewise for 8-bit.
  void add(CLI::App* cmd, const std::string& four_flag, const std::string& eight_flag) {
    cmd->add_option(four_flag, four_bit, "4-bit quantization of the decoder Linear weights: nf4 or fp4")
        ->check(CLI::IsMember({"nf4", "fp4"}));
    cmd->add_flag(eight_flag, eight_bit, "LLM.int8 quantization of the decoder Linear weights");
    cmd->add_flag("--double-quant", double_quant,
                  "4-bit: quantize the absmax too (bnb_4bit_use_double_quant)");
    cmd->add_option("--blocksize", blocksize, "4-bit block size, a power of two in [32, 4096] (default 64)");
    cmd->add_option("--compute-dtype", compute_dtype, "4-bit compute dtype: float32, bfloat16 or float16")
        ->check(CLI::IsMember({"float32", "bfloat16", "float16", "f32", "bf16", "f16", "fp16"}));
    cmd->add_option("--threshold", threshold, "8-bit outlier threshold (llm_int8_threshold, default 6.0)");
    cmd->add_option("--skip-modules", skip_modules, "Comma-separated modules kept dense (default lm_head)");
  }

  LoadOptions options() const {
    LoadOptions o;
    if (!four_bit.empty() && eight_bit) throw_error(ErrorKind::Usage, "choose 4-bit or 8-bit, not both");
    o.load_in_4bit = !four_bit.empty();
    o.load_in_8bit = eight_bit;
    if (o.load_in_4bit) o.quant_type = quant_type_from_name(four_bit, "--4bit");
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
    o.skip_modules.clear();
    std::stringstream ss(skip_modules);
    for (std::string m; std::getline(ss, m, ',');)
      if (!m.empty()) o.skip_modules.push_back(m);
    return o;
  }
};

}  // namespace qtune::cli
