// launch_local (see launcher.h): fork/exec, a 20 ms watch loop over waitpid, signal forwarding. Each rank
// runs in its own process group, so what a rank started goes down with it.
#include "dist/launcher.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "core/error.h"

namespace qtune {
namespace {

volatile sig_atomic_t g_signal = 0;
void on_signal(int s) {
  g_signal = s;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int s = WTERMSIG(status);
    return "was killed by signal " + std::to_string(s) + " (" + strsignal(s) + ")";
  }
  return "stopped (status " + std::to_string(status) + ")";
}

}  // namespace

LaunchResult launch_local(const LaunchPlan& plan, const std::vector<std::string>& argv,
                          const LaunchOptions& opt) {
  check_launch_plan(plan);
  if (argv.empty()) throw_error(ErrorKind::Usage, "launch: no command");
  const int n = plan.nproc_per_node;
  std::vector<pid_t> pids(n, -1);
  std::vector<bool> alive(n, false);
  struct sigaction sa {
  }, old_int{}, old_term{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  g_signal = 0;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  std::fflush(nullptr);
  for (int i = 0; i < n; ++i) {
    const DistConfig c = rank_config(plan, i);
    const pid_t pid = ::fork();
    if (pid < 0) throw_error(ErrorKind::Internal, "launch: fork failed: ", std::strerror(errno));
    if (pid == 0) {
      ::setpgid(0, 0);  // its own group: signals reach the rank's children too
      sigaction(SIGINT, &old_int, nullptr);
      sigaction(SIGTERM, &old_term, nullptr);
      for (const auto& [k, v] : dist_env(c)) ::setenv(k.c_str(), v.c_str(), 1);
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      std::fprintf(stderr, "rank %d: cannot run %s: %s\n", c.rank, args[0], std::strerror(errno));
      ::_exit(127);
    }
    ::setpgid(pid, pid);  // also here: no race with the first signal
    pids[i] = pid;
    alive[i] = true;
  }
  LaunchResult res;
  int left = n;
  bool stopping = false;
  std::chrono::steady_clock::time_point stop_t;
  auto signal_all = [&](int s) {
    for (int i = 0; i < n; ++i)
      if (alive[i]) ::kill(-pids[i], s);
  };
  while (left > 0) {
    if (g_signal) {  // forward ^C / SIGTERM, then wind down like a failure
      const int s = g_signal;
      g_signal = 0;
      signal_all(s);
      if (!stopping) {
        stopping = true;
        stop_t = std::chrono::steady_clock::now();
        if (res.exit_code == 0) {
          res.exit_code = 128 + s;
          res.message = std::string("launcher: got signal ") + strsignal(s) + "; stopping every rank";
        }
      }
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (int i = 0; i < n; ++i) {
        if (pids[i] != pid || !alive[i]) continue;
        alive[i] = false;
        --left;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && res.exit_code == 0) {
          const int rank = rank_config(plan, i).rank;
          res.failed_rank = rank;
          res.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
          res.message = "rank " + std::to_string(rank) + " (local rank " + std::to_string(i) + ", pid " +
                        std::to_string(pid) + ") " + describe_status(status) +
                        (left > 0 ? "; stopping the other ranks" : "");
          if (!opt.quiet) std::fprintf(stderr, "launcher: %s\n", res.message.c_str());
        }
        if (!ok && !stopping && left > 0) {
          stopping = true;
          stop_t = std::chrono::steady_clock::now();
          signal_all(SIGTERM);
        }
      }
      continue;
    }
    if (stopping &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - stop_t).count() > opt.grace_s) {
      signal_all(SIGKILL);
      stop_t = std::chrono::steady_clock::now() + std::chrono::hours(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (res.exit_code != 0)  // leftovers of the ranks' groups (their own children) go too
    for (pid_t pid : pids) ::kill(-pid, SIGKILL);
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  return res;
}

}  // namespace qtune
