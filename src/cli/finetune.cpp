// `qtune finetune`: parameter-efficient supervised fine-tuning on the CPU or one GPU with Hugging Face's
// argument names (TrainingArguments / SFTConfig / PEFT's LoraConfig, IA3Config, PromptTuningConfig,
// PromptEncoderConfig, PrefixTuningConfig, AdaptionPromptConfig / BitsAndBytesConfig). --peft-type picks the
// method (LoRA by default); flags that belong to another method are refused. The output folder gets the
// adapter folder, training_log.csv, loss_curve.png and checkpoint-N folders; train/trainer.h has the
// semantics.
// --nproc-per-node N (with --nnodes/--node-rank/--master-addr/--master-port for several nodes) re-runs
// this same command line as N data-parallel ranks (docs/distributed.md); a process that already has
// WORLD_SIZE in its environment (a rank, or torchrun / Slurm) trains as that rank instead.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/launcher.h"
#include "model/quant_load.h"
#include "peft/adapter_ops.h"
#include "train/peft_session.h"
#include "train/trainer.h"

namespace qtune::cli {

namespace {

struct FinetuneArgs {
  TrainerArgs t;
  std::string target_modules = "q_proj,v_proj";
  int64_t lora_r = 8;
  double lora_alpha = 16, lora_dropout = 0.0;
  bool rslora = false, dora = false, full = false;
  std::string lora_bias = "none", modules_to_save;
  bool load_4bit = false, double_quant = false, load_8bit = false;
  std::string quant_type = "nf4", compute_dtype = "float32";
  std::string ia3_targets, ia3_feedforward;
  std::string non_linearity = "relu";
  std::string prompt_tuning_init = "random";
  // Method-specific options and the methods they belong to (checked against the run's method).
  std::vector<std::pair<CLI::Option*, std::vector<PeftKind>>> owned;
  CLI::Option* init_opt = nullptr;
  LaunchPlan plan;  // --nproc-per-node, --nnodes, --node-rank, --master-addr, --master-port
};

// This process's command line, from /proc/self/cmdline (the ranks re-run it as it is).
std::vector<std::string> own_command_line() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  size_t start = 0;
  for (size_t i = 0; i < all.size(); ++i)
    if (all[i] == '\0') {
      args.push_back(all.substr(start, i - start));
      start = i + 1;
    }
  if (args.empty()) throw_error(ErrorKind::Internal, "cannot read /proc/self/cmdline to start the ranks");
  args[0] = "/proc/self/exe";
  return args;
}

std::string upper(std::string s) {
  for (char& c : s) c = (char)std::toupper((unsigned char)c);
  return s;
}

// A flag of another method than the run's is a mistake (it would be silently ignored): say so.
void check_method_flags(const FinetuneArgs& a, PeftKind kind) {
  for (const auto& [opt, kinds] : a.owned) {
    if (opt->count() == 0 || std::find(kinds.begin(), kinds.end(), kind) != kinds.end()) continue;
    std::string owners;
    for (PeftKind k : kinds) owners += (owners.empty() ? "" : " or ") + std::string(peft_kind_name(k));
    throw_error(ErrorKind::Usage, opt->get_name(), " is a setting of --peft-type ", owners,
                ", but this run trains ", peft_kind_name(kind),
                a.t.adapter_dir.empty() ? "" : (" (the --adapter folder's type)"));
  }
  const TrainerArgs& t = a.t;
  if (!t.adapter_dir.empty() && kind != PeftKind::Lora)
    for (const auto& [opt, kinds] : a.owned)
      if (opt->count() > 0)
        throw_error(ErrorKind::Usage, opt->get_name(), " sets up a fresh adapter; --adapter ", t.adapter_dir,
                    " continues one with the settings in its adapter_config.json");
  if (kind == PeftKind::PrefixTuning && !t.prompt.prefix_projection && t.prompt.encoder_hidden_size > 0)
    throw_error(ErrorKind::Usage,
                "--encoder-hidden-size with prefix_tuning sizes the --prefix-projection MLP; ",
                "add --prefix-projection or leave it out");
}

int run_finetune_command(FinetuneArgs& a) {
  TrainerArgs& t = a.t;
  check_launch_plan(a.plan);
  if (a.plan.world_size() > 1 && !std::getenv("WORLD_SIZE")) {  // the launcher: start the local ranks
    LaunchResult r = launch_local(a.plan, own_command_line());
    return r.exit_code;
  }
  if (a.full) {
    if (!t.peft_type.empty() && t.peft_type != "full")
      throw_error(ErrorKind::Usage, "--full-finetune trains every weight: --peft-type ", t.peft_type,
                  " does not apply");
    t.peft_type = "full";
  }
  const PeftKind kind = training_peft_kind(t);
  check_method_flags(a, kind);
  set_ia3_modules(t.ia3, a.ia3_targets, a.ia3_feedforward);
  t.bottleneck.non_linearity = adapter_act_from_name(a.non_linearity, "--non-linearity: ");
  t.prompt.prompt_tuning_init = upper(a.prompt_tuning_init);
  if (!t.prompt.prompt_tuning_init_text.empty() && a.init_opt->count() == 0)
    t.prompt.prompt_tuning_init = "TEXT";  // the text alone asks for TEXT init
  t.lora.r = a.lora_r;
  t.lora.lora_alpha = a.lora_alpha;
  t.lora.lora_dropout = a.lora_dropout;
  t.lora.use_rslora = a.rslora;
  t.lora.use_dora = a.dora;
  t.lora.bias = a.lora_bias == "all"         ? LoraBias::All
                : a.lora_bias == "lora_only" ? LoraBias::LoraOnly
                                             : LoraBias::None;
  t.lora.modules_to_save = split_comma_list(a.modules_to_save);
  set_target_modules(t.lora, a.target_modules);
  if (a.load_4bit && a.load_8bit)
    throw_error(ErrorKind::Usage, "choose --load-in-4bit or --load-in-8bit, not both");
  t.load.load_in_4bit = a.load_4bit;
  t.load.load_in_8bit = a.load_8bit;
  if (a.load_4bit) {
    t.load.quant_type = quant_type_from_name(a.quant_type, "--bnb-4bit-quant-type");
    t.load.double_quant = a.double_quant;
    t.load.compute_dtype = torch_dtype_from_name(a.compute_dtype, "--bnb-4bit-compute-dtype");
  } else if (a.double_quant) {
    throw_error(ErrorKind::Usage, "--bnb-4bit-use-double-quant needs --load-in-4bit");
  }
  TrainResult r = run_finetune(t);
  return r.stopped_early ? 3 : 0;
}

}  // namespace

void add_finetune_command(CLI::App& app, Runner& run) {
  auto a = std::make_shared<FinetuneArgs>();
  TrainerArgs& t = a->t;
  auto* cmd =
      app.add_subcommand("finetune",
                         "Supervised fine-tuning with LoRA / QLoRA, IA3, bottleneck adapters, prompt, P- or "
                         "prefix tuning, LLaMA-Adapter (writes a PEFT adapter folder)");
  cmd->add_option("--model", t.model_dir, "Model folder (config.json, *.safetensors, tokenizer files)")
      ->required();
  cmd->add_option(
         "--data", t.data_path,
         "Dataset: .jsonl rows with text | prompt+completion | messages | Alpaca fields, or a .json array")
      ->required();
  cmd->add_option("--out", t.out_dir, "Output folder: adapter, training_log.csv, loss_curve.png, checkpoints")
      ->required();
  cmd->add_option("--adapter", t.adapter_dir,
                  "Continue training this adapter folder (LoRA, IA3, bottleneck, prompt/P-/prefix tuning, "
                  "LLaMA-Adapter)");
  cmd->add_option(
      "--peft-type", t.peft_type,
      "lora (default), ia3, bottleneck, prompt_tuning, p_tuning, prefix_tuning or adaption_prompt");
  cmd->add_flag(
      "--full-finetune", a->full,
      "Train every weight of a 16/32-bit model instead of an adapter (small models); writes a model "
      "folder (F32 safetensors, config, tokenizer) to --out");
  using K = PeftKind;
  auto own = [&](CLI::Option* o, std::vector<PeftKind> kinds) { a->owned.push_back({o, std::move(kinds)}); };
  own(cmd->add_option("--lora-r", a->lora_r, "LoRA rank (default 8)"), {K::Lora});
  own(cmd->add_option("--lora-alpha", a->lora_alpha, "LoRA alpha (default 16)"), {K::Lora});
  own(cmd->add_option("--lora-dropout", a->lora_dropout, "LoRA dropout (default 0)"), {K::Lora});
  own(cmd->add_option("--target-modules", a->target_modules,
                      "LoRA: comma-separated module names or all-linear (default q_proj,v_proj)"),
      {K::Lora});
  own(cmd->add_flag("--use-rslora", a->rslora, "Scale by alpha/sqrt(r) (rsLoRA)"), {K::Lora});
  own(cmd->add_flag("--use-dora", a->dora, "DoRA adapters"), {K::Lora});
  own(cmd->add_option("--lora-bias", a->lora_bias,
                      "LoRA: which Linear biases train, as PEFT's bias: none (default), all, lora_only")
          ->check(CLI::IsMember({"none", "all", "lora_only"})),
      {K::Lora});
  own(cmd->add_option("--modules-to-save", a->modules_to_save,
                      "LoRA: modules trained whole and saved in the adapter: lm_head and/or embed_tokens "
                      "(comma-separated)"),
      {K::Lora});
  own(cmd->add_option("--ia3-target-modules", a->ia3_targets,
                      "IA3: modules with a vector, or all-linear (default: PEFT's for the model type, llama: "
                      "k_proj,v_proj,down_proj)"),
      {K::Ia3});
  own(cmd->add_option("--feedforward-modules", a->ia3_feedforward,
                      "IA3: the targets whose input is scaled (default down_proj)"),
      {K::Ia3});
  own(cmd->add_option("--bottleneck-size", t.bottleneck.bottleneck_size,
                      "Bottleneck adapters: width of the down-projection (default 64)"),
      {K::Bottleneck});
  own(cmd->add_option(
             "--adapter-style", t.bottleneck.adapter_style,
             "Bottleneck adapters: houlsby (after attention and MLP, default) or pfeiffer (after MLP)")
          ->check(CLI::IsMember({"houlsby", "pfeiffer"})),
      {K::Bottleneck});
  own(cmd->add_option("--non-linearity", a->non_linearity,
                      "Bottleneck adapters: relu (default), silu, gelu or tanh"),
      {K::Bottleneck});
  own(cmd->add_option("--num-virtual-tokens", t.prompt.num_virtual_tokens,
                      "Prompt / P- / prefix tuning: virtual tokens (default 20)"),
      {K::PromptTuning, K::PTuning, K::PrefixTuning});
  a->init_opt = cmd->add_option("--prompt-tuning-init", a->prompt_tuning_init,
                                "Prompt tuning: random (default), text or sample_vocab")
                    ->check(CLI::IsMember({"random", "text", "sample_vocab"}, CLI::ignore_case));
  own(a->init_opt, {K::PromptTuning});
  own(cmd->add_option("--prompt-tuning-init-text", t.prompt.prompt_tuning_init_text,
                      "Prompt tuning: initialise from the embeddings of this text's tokens"),
      {K::PromptTuning});
  own(cmd->add_option("--encoder-hidden-size", t.prompt.encoder_hidden_size,
                      "P-tuning's MLP / the prefix projection's hidden width (default: the token width)"),
      {K::PTuning, K::PrefixTuning});
  own(cmd->add_flag("--prefix-projection", t.prompt.prefix_projection,
                    "Prefix tuning: train the prefixes through PEFT's projection MLP"),
      {K::PrefixTuning});
  own(cmd->add_option("--adapter-len", t.adaption.adapter_len,
                      "LLaMA-Adapter: prompt rows per adapted layer (default 10)"),
      {K::AdaptionPrompt});
  own(cmd->add_option("--adapter-layers", t.adaption.adapter_layers,
                      "LLaMA-Adapter: adapt the top N layers (default 1)"),
      {K::AdaptionPrompt});
  cmd->add_option("--learning-rate", t.learning_rate, "Peak learning rate (default 2e-4)");
  cmd->add_option("--num-train-epochs", t.num_train_epochs, "Epochs (default 3)");
  cmd->add_option("--max-steps", t.max_steps, "Optimizer steps; overrides epochs when > 0");
  cmd->add_option("--per-device-train-batch-size", t.per_device_train_batch_size,
                  "Rows per micro-batch (default 8)");
  cmd->add_option("--gradient-accumulation-steps", t.gradient_accumulation_steps,
                  "Micro-batches per step (default 1)");
  cmd->add_option("--lr-scheduler-type", t.lr_scheduler_type,
                  "linear, cosine, constant, constant_with_warmup");
  cmd->add_option("--warmup-ratio", t.warmup_ratio, "Fraction of the steps spent warming up (default 0)");
  cmd->add_option("--weight-decay", t.weight_decay, "AdamW weight decay, not on norms/biases (default 0)");
  cmd->add_option("--max-grad-norm", t.max_grad_norm,
                  "Gradient clipping by global norm (default 1.0; 0 = off)");
  cmd->add_option(
      "--optim", t.optim,
      "adamw_torch, adamw_8bit, lion_8bit, paged_adamw_32bit, paged_adamw_8bit, paged_lion_8bit "
      "(paged_*: states in pinned host memory streamed to the GPU; on the CPU the same as unpaged)");
  cmd->add_flag("--load-in-4bit", a->load_4bit, "QLoRA: quantize the base Linears to 4 bits while loading");
  cmd->add_option("--bnb-4bit-quant-type", a->quant_type, "nf4 or fp4 (default nf4)")
      ->check(CLI::IsMember({"nf4", "fp4"}));
  cmd->add_flag("--bnb-4bit-use-double-quant", a->double_quant, "Quantize the 4-bit absmax too");
  cmd->add_option("--bnb-4bit-compute-dtype", a->compute_dtype,
                  "float32, bfloat16 or float16 (default float32)");
  cmd->add_flag("--load-in-8bit", a->load_8bit, "LLM.int8 base Linears");
  cmd->add_option("--seed", t.seed, "Seed for the adapter init, data order and dropout (default 42)");
  cmd->add_option("--eval-split", t.eval_split, "Fraction of rows held out for eval loss (default 0)");
  cmd->add_option("--eval-steps", t.eval_steps, "Evaluate every N steps (default: at the end only)");
  cmd->add_option("--save-steps", t.save_steps, "Write out/checkpoint-N every N steps (default: never)");
  cmd->add_option("--logging-steps", t.logging_steps, "Log a line and the CSV every N steps (default 1)");
  cmd->add_option("--max-seq-length", t.max_seq_length,
                  "Truncate examples to this many tokens (default 1024)");
  cmd->add_flag("--packing", t.packing,
                "Pack several examples per row (attention stays inside each example)");
  cmd->add_flag("--completion-only-loss", t.completion_only_loss,
                "Train only on completions / assistant turns");
  cmd->add_flag_function(
      "--gradient-checkpointing", [&t](int64_t) { t.gradient_checkpointing = 1; },
      "Recompute each block in backward (default: on for GPU training, off on the CPU)");
  cmd->add_flag_function(
      "--no-gradient-checkpointing", [&t](int64_t) { t.gradient_checkpointing = 0; },
      "Keep every block's activations (faster, more memory)");
  cmd->add_option("--device", t.device, "cpu, cuda or auto (default: the GPU when usable)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  cmd->add_flag("--offload-activations", t.offload_activations,
                "GPU: keep each block's checkpointed input in pinned host memory (long sequences)");
  cmd->add_flag("--fsdp", t.fsdp,
                "With several ranks: shard the frozen base weights and the optimizer states over them "
                "(each block gathered just before it runs)");
  cmd->add_flag("--resume", t.resume, "Continue from the newest checkpoint-N in --out");
  cmd->add_flag("--quiet", t.quiet, "No progress output");
  cmd->add_option("--nproc-per-node", a->plan.nproc_per_node,
                  "Data parallel: processes (GPUs) on this node, one rank each (default 1)");
  cmd->add_option("--nnodes", a->plan.nnodes, "Data parallel: nodes in the run (default 1)");
  cmd->add_option("--node-rank", a->plan.node_rank, "Data parallel: this node's index (default 0)");
  cmd->add_option("--master-addr", a->plan.master_addr,
                  "Data parallel: host of rank 0's rendezvous store (default 127.0.0.1)");
  cmd->add_option("--master-port", a->plan.master_port, "Data parallel: its TCP port (default 29500)");
  cmd->add_option("--stop-after-steps", t.stop_after_steps, "Testing: exit after this step as if killed")
      ->group("");
  cmd->callback([&run, a] { run = [a] { return run_finetune_command(*a); }; });
}

}  // namespace qtune::cli
