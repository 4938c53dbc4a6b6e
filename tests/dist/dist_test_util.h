// Helpers for the distributed tests: run a function as N forked ranks on localhost and collect their
// exit codes; a fresh port per call so parallel test binaries do not collide.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <functional>
#include <vector>

namespace qtune::test {

inline int fresh_port() {
  static int n = 0;
  return 20000 + (int)((getpid() * 131 + 17 * n++) % 30000);
}

// Forks one child per rank running fn(rank) (its return value is the exit code; an exception prints
// and exits 99); returns the exit codes in rank order (128 + signal when killed).
inline std::vector<int> run_ranks(int n, const std::function<int(int)>& fn) {
  std::fflush(nullptr);
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r) {
    pid_t pid = fork();
    if (pid == 0) {
      int code = 99;
      try {
        code = fn(r);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d threw: %s\n", r, e.what());
      }
      std::fflush(nullptr);
      _exit(code);
    }
    pids.push_back(pid);
  }
  std::vector<int> codes;
  for (pid_t p : pids) {
    int st = 0;
    waitpid(p, &st, 0);
    codes.push_back(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  }
  return codes;
}

}  // namespace qtune::test
