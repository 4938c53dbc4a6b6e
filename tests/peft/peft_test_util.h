// Helpers shared by the peft tests: fixture paths, relative norm error, error text, and copies of fixture
// folders that a test may break (edit_config).
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace peft_test {

const std::string kFix = std::string(QTUNE_FIXTURES) + "/peft/";
const std::string kModels = std::string(QTUNE_FIXTURES) + "/model/";

// ‖a − b‖ / ‖b‖ over all elements.
inline double rel_err(const qtune::Tensor& a, const qtune::Tensor& b) {
  std::vector<float> x = a.to_f32_vector(), y = b.to_f32_vector();
  EXPECT_EQ(x.size(), y.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
    num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
    den += (double)y[i] * y[i];
  }
  return std::sqrt(num / den);
}

// The message of the qtune::Error f throws, or "(no error)".
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const qtune::Error& e) {
    return e.what();
  }
  return "(no error)";
}

inline std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A copy of fixture folder kFix/name in a temp dir, for tests that break it.
inline std::string copy_fixture(const std::string& name, const std::string& tag) {
  namespace fs = std::filesystem;
  std::string dst = testing::TempDir() + "/peft_" + tag;
  fs::remove_all(dst);
  fs::create_directories(dst);
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors"})
    fs::copy_file(kFix + name + "/" + f, dst + "/" + f);
  return dst;
}

inline void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(read_file(dir + "/adapter_config.json"));
  edit(j);
  std::ofstream(dir + "/adapter_config.json") << j.dump(2);
}

}  // namespace peft_test
