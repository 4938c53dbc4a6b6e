// `qtune inspect PATH`: tensors, dtypes, shapes, parameter count and memory estimates of a checkpoint.
#include "io/inspect.h"

#include <cstdio>

#include "cli/commands.h"

namespace qtune::cli {

void add_inspect_command(CLI::App& app, Runner& run) {
  auto path = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("inspect", "List a checkpoint's tensors, parameter count and memory needs");
  cmd->add_option("path", *path, "Model folder, .safetensors file or model.safetensors.index.json")
      ->required();
  cmd->callback([&run, path] {
    run = [path] {
      std::string report = inspect_report(*path);
      std::fwrite(report.data(), 1, report.size(), stdout);
      return 0;
    };
  });
}

}  // namespace qtune::cli
