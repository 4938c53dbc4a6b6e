// Subcommands of the qtune program; each file registers one with CLI11 and runs it.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace qtune::cli {

// Each add_* registers a subcommand on app and sets `run` to what executes once parsing succeeded.
using Runner = std::function<int()>;
void add_env_command(CLI::App& app, Runner& run);
void add_tokenize_command(CLI::App& app, Runner& run);
void add_inspect_command(CLI::App& app, Runner& run);
void add_generate_command(CLI::App& app, Runner& run);
void add_bench_command(CLI::App& app, Runner& run);
void add_quantize_command(CLI::App& app, Runner& run);
void add_perplexity_command(CLI::App& app, Runner& run);
void add_finetune_command(CLI::App& app, Runner& run);
void add_merge_command(CLI::App& app, Runner& run);

}  // namespace qtune::cli
