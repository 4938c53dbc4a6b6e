// `qtune merge`: folds a PEFT LoRA / DoRA adapter into its base model and writes a merged Hugging Face model
// folder (16-bit by default) that transformers and qtune load like any model; peft/merge_folder.h has the
// semantics.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "model/quant_load.h"
#include "peft/merge_folder.h"

namespace qtune::cli {

void add_merge_command(CLI::App& app, Runner& run) {
  struct Args {
    std::string model, adapter, out, dtype, max_shard_size = "5GB";
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "merge", "Merge a PEFT LoRA/DoRA adapter into its base model (as PEFT's merge_and_unload) and save it");
  cmd->add_option("--model", a->model, "Base model folder (dense, or a bitsandbytes folder: dequantized)")
      ->required();
  cmd->add_option("--adapter", a->adapter,
                  "PEFT adapter folder (adapter_config.json, adapter_model.safetensors)")
      ->required();
  cmd->add_option("--out", a->out, "Output model folder")->required();
  cmd->add_option("--dtype", a->dtype,
                  "Weights dtype: bf16, f16 or f32 (default: the base's 16-bit dtype, else bf16)")
      ->check(CLI::IsMember({"bf16", "f16", "f32", "bfloat16", "float16", "float32"}));
  cmd->add_option("--max-shard-size", a->max_shard_size, "Shard the weights above this size (default 5GB)");
  cmd->callback([&run, a] {
    run = [a] {
      MergeOptions o;
      o.max_shard_bytes = parse_shard_size(a->max_shard_size);
      if (!a->dtype.empty()) {
        o.dtype_given = true;
        const std::string& d = a->dtype;
        o.dtype = d == "bf16" || d == "bfloat16" ? DType::BF16
                  : d == "f16" || d == "float16" ? DType::F16
                                                 : DType::F32;
      }
      MergeReport r = merge_adapter_folder(a->model, a->adapter, a->out, o);
      if (r.dequantized_linears)
        std::fprintf(stderr,
                     "note: the base is bitsandbytes-quantized: %lld Linear weights were dequantized before "
                     "merging (as PEFT does) and are written dense\n",
                     (long long)r.dequantized_linears);
      if (r.untied)
        std::fprintf(
            stderr, "note: the adapter changed lm_head or the embedding: tie_word_embeddings is now false\n");
      std::fprintf(stderr,
                   "merged %lld LoRA layers, replaced %lld tensors; wrote %lld %s tensors (%.1f MB) in %d "
                   "file(s) under %s\n",
                   (long long)r.merged_layers, (long long)r.replaced_tensors, (long long)r.tensors,
                   torch_dtype_name(r.dtype), r.bytes_out / 1e6, r.shards, a->out.c_str());
      return 0;
    };
  });
}

}  // namespace qtune::cli
