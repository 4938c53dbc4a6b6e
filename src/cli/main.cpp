// qtune command-line entry point. Every error ends as one line on stderr and a non-zero exit.
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"qtune: fine-tune and run Hugging Face language models natively (C++/CUDA)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("qtune 0.1.0"));
  qtune::cli::Runner run;
  qtune::cli::add_generate_command(app, run);
  qtune::cli::add_tokenize_command(app, run);
  qtune::cli::add_inspect_command(app, run);
  qtune::cli::add_env_command(app, run);
  qtune::cli::add_bench_command(app, run);
  qtune::cli::add_quantize_command(app, run);
  qtune::cli::add_perplexity_command(app, run);
  qtune::cli::add_finetune_command(app, run);
  qtune::cli::add_merge_command(app, run);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return run ? run() : 0;
  } catch (const qtune::Error& e) {
    std::fprintf(stderr, "qtune: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "qtune: error: out of host memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qtune: error: %s\n", e.what());
    return 1;
  }
}
