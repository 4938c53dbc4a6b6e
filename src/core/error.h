// Typed errors. The library throws these on bad input (never aborts); the CLI prints what() on one line
// and exits non-zero. Messages carry context: file, tensor name, line, expected vs got.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace qtune {

enum class ErrorKind { Format, Config, Shape, Unsupported, OutOfMemory, Io, Usage, Cuda, Internal };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& msg) : std::runtime_error(msg), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// Builds a message from streamable parts: throw_error(ErrorKind::Format, "file ", path, ": bad header").
template <class... Args>
[[noreturn]] void throw_error(ErrorKind kind, const Args&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw Error(kind, os.str());
}

}  // namespace qtune

// Internal invariant checks (programming errors, not user input).
#define QT_CHECK(cond, ...)                                                                     \
  do {                                                                                          \
    if (!(cond))                                                                                \
      ::qtune::throw_error(::qtune::ErrorKind::Internal, __FILE__, ":", __LINE__, ": check '", \
                           #cond, "' failed. ", ##__VA_ARGS__);                                 \
  } while (0)
