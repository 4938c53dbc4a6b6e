// Helpers for the model tests: fixture paths (tests/fixtures/model, made by tools/make_model_fixtures.py),
// expected outputs, the relative norm error, and error-message checks.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "io/safetensors.h"

namespace qtune_test {

inline std::string fixture(const std::string& name) {
  return std::string(QTUNE_FIXTURES) + "/model/" + name;
}

inline nlohmann::json expected_json(const std::string& name) {
  std::ifstream in(fixture(name) + "/expected.json");
  return nlohmann::json::parse(in);
}

// A tensor from the folder's expected.safetensors ("ids", "logits", "batch_ids", "batch_logits").
inline qtune::Tensor expected_tensor(const std::string& name, const std::string& tensor) {
  auto f = qtune::SafetensorsFile::open(fixture(name) + "/expected.safetensors");
  return f->get(tensor).clone();
}

inline double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); i++) {
    double d = (double)got[i] - want[i];
    num += d * d;
    den += (double)want[i] * want[i];
  }
  return std::sqrt(num / den);
}

template <class F>
void expect_error(F f, qtune::ErrorKind kind, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const qtune::Error& e) {
    EXPECT_EQ((int)e.kind(), (int)kind) << e.what();
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

// A fresh empty folder under the test temp dir.
inline std::string temp_dir(const std::string& name) {
  std::filesystem::path p = std::filesystem::path(testing::TempDir()) /
                            ("qtune_model_" + name + "_" + std::to_string(std::random_device{}()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

}  // namespace qtune_test
