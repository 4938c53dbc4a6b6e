// Helpers for the io tests: a temporary folder removed at scope exit, raw file writes (malformed files are
// built byte by byte at test time), safetensors byte assembly, and error-message assertions.
#pragma once
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "core/error.h"

namespace qtune_test {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "qtune_io_XXXXXX").string();
    char* p = mkdtemp(&tmpl[0]);
    if (!p) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), (std::streamsize)bytes.size());
  if (!out) throw std::runtime_error("cannot write " + path);
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// 8-byte little-endian length n, then the header text, then the data bytes.
inline std::string st_bytes(const std::string& header, const std::string& data, uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; i++) out[i] = (char)(n >> (8 * i));
  return out + header + data;
}
inline std::string st_bytes(const std::string& header, const std::string& data) {
  return st_bytes(header, data, header.size());
}

// Runs f, expects a qtune::Error of `kind`, returns its message ("" and a failure when none is thrown).
inline std::string error_of(const std::function<void()>& f, qtune::ErrorKind kind) {
  try {
    f();
  } catch (const qtune::Error& e) {
    EXPECT_EQ((int)e.kind(), (int)kind) << "message: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected a qtune::Error, none was thrown";
  return "";
}

}  // namespace qtune_test

#define EXPECT_HAS(msg, sub) \
  EXPECT_NE(std::string(msg).find(sub), std::string::npos) << "message: " << (msg) << "\n  lacks: " << (sub)
