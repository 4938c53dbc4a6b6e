// 8-bit dynamic blockwise quantization and the code books: bit-exact against bitsandbytes goldens
// (q8_*.safetensors, codebooks.safetensors), plus nearest-code and mean references on fresh inputs.
#include "quant/blockwise8.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "fixture.h"
#include "quant/bnb_cuda_rules.h"
#include "quant/codebook.h"
#include "quant/double_quant.h"

using namespace qtune;
using qtune_test::Fixture;
using qtune_test::load_fixture;
using qtune_test::same_bits;

namespace {
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST(CodeBooks, MatchBitsandbytes) {
  Fixture fx = load_fixture("codebooks.safetensors");
  for (bool sg : {true, false}) {
    std::vector<float> m = create_dynamic_map(sg);
    EXPECT_TRUE(same_bits(Tensor::from_f32(m, {256}), fx.at(sg ? "dynamic_signed" : "dynamic_unsigned")))
        << (sg ? "signed" : "unsigned");
    EXPECT_TRUE(std::is_sorted(m.begin(), m.end()));
    EXPECT_EQ(m.back(), 1.0f);
  }
  EXPECT_EQ(0, std::memcmp(code4(QuantType::NF4), fx.at("nf4").raw(), 64));
  EXPECT_EQ(0, std::memcmp(code4(QuantType::FP4), fx.at("fp4").raw(), 64));
}

TEST(Blockwise8, GoldensAreBitExact) {
  const int count = qtune_test::for_each_fixture("q8", [&](const Fixture& fx) {
    const int64_t bs = std::stoll(fx.meta.at("blocksize"));
    const bool sg = fx.meta.at("signed") == "1";
    const std::vector<float> code = create_dynamic_map(sg);
    ASSERT_TRUE(same_bits(Tensor::from_f32(code, {256}), fx.at("code")));
    Quant8Lut lut(code);
    Blockwise8 b = quantize_blockwise_8bit(fx.at("input"), lut, bs);
    EXPECT_TRUE(same_bits(b.q, fx.at("q"))) << "codes";
    EXPECT_TRUE(same_bits(b.absmax, fx.at("absmax"))) << "absmax";
    Blockwise8 golden{fx.at("q"), fx.at("absmax"), bs};
    EXPECT_TRUE(same_bits(dequantize_blockwise_8bit(golden, code, DType::F32), fx.at("dq_f32")));
    EXPECT_TRUE(same_bits(dequantize_blockwise_8bit(golden, code, DType::BF16), fx.at("dq_bf16")));
    EXPECT_TRUE(same_bits(dequantize_blockwise_8bit(golden, code, DType::F16), fx.at("dq_f16")));
  });
  EXPECT_GE(count, 5);
}

// bitsandbytes' CUDA kernel (goldens cuda_q8_*, made on a GPU by tools/make_quant_cuda_fixtures.py): its
// binary search, reproduced by quantize_8bit_cuda_rules_raw; the absmax byte for byte, and a code may differ
// only where bitsandbytes' approximate reciprocal (one ulp) moves the scaled value to the next code.
TEST(Blockwise8, CudaBackendMatchesGoldens) {
  qtune_test::CodeDiff d;
  const int count = qtune_test::for_each_fixture("cuda_q8", [&](const Fixture& fx) {
    const int64_t bs = std::stoll(fx.meta.at("blocksize"));
    const std::vector<float> code = create_dynamic_map(true);
    ASSERT_TRUE(same_bits(Tensor::from_f32(code, {256}), fx.at("code")));
    const Tensor& x = fx.at("input");
    Tensor q = Tensor::empty(x.shape(), DType::U8);
    Tensor absmax = Tensor::empty({(x.numel() + bs - 1) / bs}, DType::F32);
    quantize_8bit_cuda_rules_raw(x.raw(), x.dtype(), x.numel(), code.data(), bs, q.data<uint8_t>(),
                                 absmax.data<float>());
    EXPECT_TRUE(same_bits(absmax, fx.at("absmax"))) << "absmax";
    const std::vector<float> xv = x.to_dtype(DType::F32).to_f32_vector(), am = absmax.to_f32_vector();
    qtune_test::count_code_diffs(
        x.numel(), q.data<uint8_t>(), fx.at("q").data<uint8_t>(),
        [&](int64_t k) { return bnb_cuda_reciprocal(am[(size_t)(k / bs)]); },
        [&](int64_t k, float inv) {
          return bnb_cuda_code8(code.data(), bnb_cuda_scaled(xv[(size_t)k], inv));
        },
        d);
  });
  std::printf("[ measured ] %lld codes, %lld moved by the approximate reciprocal\n", (long long)d.codes,
              (long long)d.moved);
  EXPECT_GE(count, 8);
  EXPECT_EQ(d.unexplained, 0);
  EXPECT_LE(d.moved * 10000, d.codes);
}

// The LUT picks the nearest code except within one LUT cell (2/65535) of a code midpoint, and is never
// more than one cell off.
TEST(Blockwise8, NearestCodeAwayFromMidpoints) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const std::vector<float> code = create_dynamic_map(true);
  Quant8Lut lut(code);
  std::vector<float> v(20000);
  for (auto& x : v) x = nd(rng) * (rng() % 2 ? 1.0f : 1e-3f);
  Blockwise8 b = quantize_blockwise_8bit(Tensor::from_f32(v, {(int64_t)v.size()}), lut, 256);
  int64_t checked = 0;
  for (size_t i = 0; i < v.size(); i++) {
    const double a = b.absmax.data<float>()[i / 256];
    const double s = v[i] / a;
    int best = 0;
    for (int c = 1; c < 256; c++)
      if (std::fabs(s - code[c]) < std::fabs(s - code[best])) best = c;
    const int got = b.q.data<uint8_t>()[i];
    bool near_mid = false;
    for (int c = 0; c + 1 < 256; c++)
      if (std::fabs(s - 0.5 * ((double)code[c] + code[c + 1])) < 2.0 / 65535) near_mid = true;
    if (!near_mid) {
      EXPECT_EQ(got, best) << "value " << s;
      checked++;
    }
    // Anywhere: at most one LUT cell worse than the nearest code (near 0 the codes are denser than cells).
    EXPECT_LE(std::fabs(s - code[got]), std::fabs(s - code[best]) + 2.0 / 65535) << "value " << s;
  }
  EXPECT_GT(checked, 10000);  // about half the values lie where codes are sparser than LUT cells
}

TEST(Blockwise8, Errors) {
  std::vector<float> bad = create_dynamic_map(true);
  std::swap(bad[3], bad[200]);
  EXPECT_NE(error_of([&] { Quant8Lut l(bad); }).find("sorted ascending"), std::string::npos);
  EXPECT_NE(error_of([&] { Quant8Lut l(std::vector<float>(10, 0.0f)); }).find("expected 256 values, got 10"),
            std::string::npos);
  Quant8Lut lut(create_dynamic_map(true));
  Tensor x = Tensor::from_f32(std::vector<float>(100, 1.0f), {100});
  EXPECT_NE(error_of([&] { quantize_blockwise_8bit(x, lut, 100); }).find("invalid block size 100"),
            std::string::npos);
  Blockwise8 b = quantize_blockwise_8bit(x, lut, 64);
  b.absmax = Tensor::zeros({5}, DType::F32);
  EXPECT_NE(
      error_of([&] { dequantize_blockwise_8bit(b, lut.code(), DType::F32); }).find("absmax has 5 values"),
      std::string::npos);
}

// torch_mean_f32 against a double-precision mean (fresh random sizes, incl. the cascade's level boundaries).
TEST(DoubleQuant, TorchMeanIsAccurate) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> ud(0.0f, 3.0f);
  for (int64_t n : {1, 3, 7, 8, 15, 64, 65, 255, 1000, 4097, 70000, 300000}) {
    std::vector<float> v((size_t)n);
    double ref = 0;
    for (auto& x : v) {
      x = ud(rng);
      ref += x;
    }
    ref /= (double)n;
    const float m = torch_mean_f32(v.data(), n);
    EXPECT_LE(std::fabs(m - ref) / ref, 2e-7) << "n " << n;
  }
  EXPECT_NE(error_of([&] { torch_mean_f32(nullptr, 0); }).find("empty input"), std::string::npos);
}

// torch.mean on CUDA (the offset bitsandbytes' GPU double quant stores), bit for bit against the means torch
// 2.11 gave on an H200 (tests/fixtures/quant/torch_cuda_mean.json, tools/make_quant_cuda_fixtures.py) for
// sizes from 1 to 7.3M: plain and vector loads, one block and up to 458 blocks with a last-block sum. The
// values are tools/...py's hashed_values, recomputed here.
std::vector<float> hashed_values(int64_t n, uint64_t seed) {
  std::vector<float> v((size_t)n);
  for (int64_t i = 0; i < n; i++) {
    uint64_t z = (uint64_t)i + (seed << 32) + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const uint32_t bits = (uint32_t)((z & 7) + 124) << 23 | (uint32_t)(z >> 41);
    std::memcpy(&v[(size_t)i], &bits, 4);
  }
  return v;
}

TEST(DoubleQuant, TorchCudaMeanMatchesTorch) {
  std::ifstream f(qtune_test::quant_fixture_path("torch_cuda_mean.json"));
  ASSERT_TRUE(f) << "torch_cuda_mean.json";
  const nlohmann::json j = nlohmann::json::parse(f);
  int checked = 0, cpu_mean_differs = 0;
  for (const auto& m : j.at("means")) {
    const int64_t n = m[0].get<int64_t>();
    const std::vector<float> v = hashed_values(n, m[1].get<uint64_t>());
    const uint32_t want = m[2].get<uint32_t>();
    const float got = torch_cuda_mean_f32(v.data(), n);
    uint32_t bits;
    std::memcpy(&bits, &got, 4);
    EXPECT_EQ(bits, want) << "n " << n << " seed " << m[1];
    const float cpu = torch_mean_f32(v.data(), n);
    cpu_mean_differs += std::memcmp(&cpu, &want, 4) != 0;
    checked++;
  }
  std::printf("[ measured ] %d torch CUDA means reproduced; torch's CPU mean differs in %d of them\n",
              checked, cpu_mean_differs);
  EXPECT_GE(checked, 150);
  EXPECT_GE(cpu_mean_differs, 20);  // the two orders part often, so the test tells them apart
  EXPECT_NE(error_of([&] { torch_cuda_mean_f32(nullptr, 0); }).find("empty input"), std::string::npos);
}

TEST(DoubleQuant, RoundTrip) {
  std::mt19937 rng(10);
  std::uniform_real_distribution<float> ud(0.01f, 0.2f);
  std::vector<float> a(1000);
  for (auto& x : a) x = ud(rng);
  NestedAbsmax n = double_quantize_absmax(a.data(), (int64_t)a.size());
  ASSERT_EQ(n.absmax.size(), 4u);  // ceil(1000 / 256)
  std::vector<float> back(a.size());
  const std::vector<float> code = create_dynamic_map(true);
  double_dequantize_absmax(n.q.data(), n.absmax.data(), code.data(), n.offset, (int64_t)a.size(),
                           back.data());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); i++) {
    num += (a[i] - (double)back[i]) * (a[i] - (double)back[i]);
    den += (double)a[i] * a[i];
  }
  EXPECT_LT(std::sqrt(num / den), 5e-3);
}
