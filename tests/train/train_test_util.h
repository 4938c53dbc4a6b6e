// Helpers for the train tests: fixture paths, relative norm error, error-message checks.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace qtune_test {

inline std::string model_fixture(const std::string& name) {
  return std::string(QTUNE_FIXTURES) + "/model/" + name;
}
inline std::string backward_fixture(const std::string& file) {
  return std::string(QTUNE_FIXTURES) + "/backward/" + file;
}

inline double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); i++) {
    double d = (double)got[i] - want[i];
    num += d * d;
    den += (double)want[i] * want[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1e-300));
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

}  // namespace qtune_test
