// Helpers for the distributed tests: run a function as N forked ranks on localhost and collect their
// exit codes; a fresh port per call so parallel test binaries do not collide.
#pragma once
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <functional>
#include <vector>

namespace qtune::test {

// A port in 20000-31999 that binds now. Below 32768 on purpose: Linux hands out 32768-60999 as the local
// ports of outgoing connections, so a port there can be taken by any client socket of a concurrent test.
inline int fresh_port() {
  static int n = 0;
  for (int attempt = 0; attempt < 64; ++attempt) {
    const int port = 20000 + (int)((getpid() * 131 + 17 * n++) % 12000);
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return port;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons((uint16_t)port);
    const bool free_now = ::bind(fd, (sockaddr*)&addr, sizeof addr) == 0;
    ::close(fd);
    if (free_now) return port;
  }
  return 20000 + (int)(getpid() % 12000);
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
