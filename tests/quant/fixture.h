// Test helpers for the quant goldens: a minimal safetensors reader (the quant tests do not depend on io/)
// and bitwise comparisons. Fixtures come from tools/make_quant_fixtures.py (real bitsandbytes).
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "core/tensor.h"

namespace qtune_test {

struct Fixture {
  std::map<std::string, qtune::Tensor> tensors;
  std::map<std::string, std::string> meta;
  const qtune::Tensor& at(const std::string& name) const {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw std::runtime_error("fixture has no tensor " + name);
    return it->second;
  }
  bool has(const std::string& name) const { return tensors.count(name) > 0; }
};

inline std::string quant_fixture_path(const std::string& name) {
  return std::string(QTUNE_FIXTURES) + "/quant/" + name;
}

inline Fixture load_fixture(const std::string& name) {
  const std::string path = quant_fixture_path(name);
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open fixture " + path);
  uint64_t hlen = 0;
  f.read(reinterpret_cast<char*>(&hlen), 8);
  std::string header(hlen, '\0');
  f.read(&header[0], (std::streamsize)hlen);
  std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto j = nlohmann::json::parse(header);
  Fixture fx;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      for (auto m = it.value().begin(); m != it.value().end(); ++m)
        fx.meta[m.key()] = m.value().get<std::string>();
      continue;
    }
    qtune::DType dt;
    if (!qtune::dtype_from_name(it.value()["dtype"].get<std::string>(), &dt))
      throw std::runtime_error("fixture " + path + ": unknown dtype");
    qtune::Shape shape = it.value()["shape"].get<qtune::Shape>();
    size_t b = it.value()["data_offsets"][0].get<size_t>(), e = it.value()["data_offsets"][1].get<size_t>();
    qtune::Tensor t = qtune::Tensor::empty(shape, dt);
    if (e - b != t.nbytes()) throw std::runtime_error("fixture " + path + ": size mismatch for " + it.key());
    if (e > b) std::memcpy(t.raw(), data.data() + b, e - b);
    fx.tensors[it.key()] = t;
  }
  return fx;
}

// Runs body(fixture) on PREFIX_00.safetensors, PREFIX_01.safetensors, ... up to the first missing number,
// each under a SCOPED_TRACE of its name; returns how many there were.
template <class Body>
int for_each_fixture(const std::string& prefix, Body&& body) {
  int n = 0;
  for (;; n++) {
    char num[16];
    std::snprintf(num, sizeof(num), "_%02d.safetensors", n);
    const std::string name = prefix + num;
    if (!std::ifstream(quant_fixture_path(name))) break;
    SCOPED_TRACE(name);
    body(static_cast<const Fixture&>(load_fixture(name)));
  }
  return n;
}

// Codes made by bitsandbytes' CUDA rules on two sides that differ only in the reciprocal of the block's (or
// row's) absmax: the GPU's approximate reciprocal against a correctly rounded one, at most one ulp apart.
// A code that differs is `moved` when the reciprocal one ulp up or down gives theirs, else `unexplained`.
// inv_of(i): our reciprocal for value i; code_at(i, inv): the code value i takes with reciprocal inv.
struct CodeDiff {
  int64_t codes = 0, moved = 0, unexplained = 0;
  void add(const CodeDiff& o) {
    codes += o.codes;
    moved += o.moved;
    unexplained += o.unexplained;
  }
};
template <class Code, class InvOf, class CodeAt>
void count_code_diffs(int64_t n, const Code* ours, const Code* theirs, InvOf&& inv_of, CodeAt&& code_at,
                      CodeDiff& d) {
  for (int64_t i = 0; i < n; i++) {
    d.codes++;
    if (ours[i] == theirs[i]) continue;
    const float inv = inv_of(i);
    const bool ulp = theirs[i] == (Code)code_at(i, std::nextafter(inv, 0.0f)) ||
                     theirs[i] == (Code)code_at(i, std::nextafter(inv, INFINITY));
    ulp ? d.moved++ : d.unexplained++;
  }
}

// Same dtype, shape and bytes; on failure reports the first differing element.
inline ::testing::AssertionResult same_bits(const qtune::Tensor& got, const qtune::Tensor& want) {
  if (got.dtype() != want.dtype())
    return ::testing::AssertionFailure() << "dtype " << got.describe() << " vs " << want.describe();
  if (got.numel() != want.numel())
    return ::testing::AssertionFailure() << "numel " << got.describe() << " vs " << want.describe();
  const size_t es = std::max<size_t>(1, qtune::dtype_bits(got.dtype()) / 8);
  const char* a = static_cast<const char*>(got.raw());
  const char* b = static_cast<const char*>(want.raw());
  for (int64_t i = 0; i < got.numel(); i++)
    if (std::memcmp(a + i * es, b + i * es, es) != 0) {
      auto val = [&](const qtune::Tensor& t, const char* p) -> std::string {
        switch (t.dtype()) {
          case qtune::DType::F32: {
            float v;
            std::memcpy(&v, p, 4);
            return std::to_string(v);
          }
          case qtune::DType::BF16: {
            uint16_t v;
            std::memcpy(&v, p, 2);
            return std::to_string(qtune::bf16_to_f32(v));
          }
          case qtune::DType::F16: {
            uint16_t v;
            std::memcpy(&v, p, 2);
            return std::to_string(qtune::f16_to_f32(v));
          }
          case qtune::DType::U8:
            return std::to_string(*(const uint8_t*)p);
          case qtune::DType::I8:
            return std::to_string(*(const int8_t*)p);
          default:
            return "?";
        }
      };
      return ::testing::AssertionFailure() << "element " << i << " of " << got.numel() << ": got "
                                           << val(got, a + i * es) << ", want " << val(want, b + i * es);
    }
  return ::testing::AssertionSuccess();
}

}  // namespace qtune_test
