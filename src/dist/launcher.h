// The local launcher (torchrun's job for one node): starts plan.nproc_per_node copies of a command, each
// with its rank's environment (dist_env), forwards SIGINT/SIGTERM to them, and watches them: when one
// exits with a failure, the others get SIGTERM, then SIGKILL after grace_s, and the launcher reports
// which rank failed and how. No child outlives the launcher's return.
//
//   LaunchResult r = launch_local(plan, {"/proc/self/exe", "finetune", ...});
//   if (r.exit_code != 0) fprintf(stderr, "%s\n", r.message.c_str());   // "rank 1 (pid 4242) ..."
#pragma once
#include <string>
#include <vector>

#include "dist/dist_config.h"

namespace qtune {

struct LaunchResult {
  int exit_code = 0;     // 0 when every rank exited 0
  int failed_rank = -1;  // the first rank that failed
  std::string message;   // one line naming that rank, its pid and its exit status or signal
};

struct LaunchOptions {
  double grace_s = 10;  // SIGTERM → SIGKILL delay for the surviving ranks
  bool quiet = false;   // no message on stderr
};

// argv[0] is run through execvp; "/proc/self/exe" runs this very binary.
LaunchResult launch_local(const LaunchPlan& plan, const std::vector<std::string>& argv,
                          const LaunchOptions& opt = {});

}  // namespace qtune
