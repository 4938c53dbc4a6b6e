// NF4 / FP4: bit-exact against bitsandbytes goldens (tests/fixtures/quant/q4_*.safetensors, made by
// tools/make_quant_fixtures.py), plus an independent nearest-code reference on fresh random inputs.
#include "quant/quant4.h"

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include "bnb_cuda_check.h"
#include "core/error.h"
#include "fixture.h"
#include "quant/bnb_cuda_rules.h"

using namespace qtune;
using qtune_test::Fixture;
using qtune_test::load_fixture;
using qtune_test::same_bits;

namespace {

std::vector<std::string> q4_fixtures() {
  std::vector<std::string> names;
  for (int i = 0;; i++) {
    char name[32];
    std::snprintf(name, sizeof(name), "q4_%02d.safetensors", i);
    if (!std::ifstream(qtune_test::quant_fixture_path(name))) break;
    names.push_back(name);
  }
  return names;
}

Tensor random_tensor(const Shape& shape, DType dt, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v((size_t)shape_numel(shape));
  for (auto& x : v) x = nd(rng);
  return Tensor::from_f32(v, shape).to_dtype(dt);
}

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

TEST(Quant4, GoldensAreBitExact) {
  const auto names = q4_fixtures();
  ASSERT_GE(names.size(), 20u) << "expected >= 20 4-bit golden files";
  for (const auto& name : names) {
    SCOPED_TRACE(name);
    Fixture fx = load_fixture(name);
    const QuantType qt = quant_type_from_name(fx.meta.at("quant_type"));
    const int64_t bs = std::stoll(fx.meta.at("blocksize"));
    const bool dq = fx.meta.at("double_quant") == "1";
    const Tensor& x = fx.at("input");
    Quant4Tensor q = quantize_4bit(x, qt, bs, dq);
    EXPECT_TRUE(same_bits(q.packed, fx.at("packed"))) << "packed bytes";
    EXPECT_EQ(q.packed.shape(), fx.at("packed").shape());
    EXPECT_EQ(0, std::memcmp(code4(qt), fx.at("code").raw(), 16 * sizeof(float))) << "code book";
    if (dq) {
      ASSERT_TRUE(q.nested);
      EXPECT_TRUE(same_bits(q.absmax, fx.at("absmax_u8"))) << "nested codes";
      EXPECT_TRUE(same_bits(q.nested_absmax, fx.at("nested_absmax"))) << "nested absmax";
      EXPECT_TRUE(same_bits(q.nested_code, fx.at("nested_code"))) << "nested code book";
      const float offset = fx.at("offset").data<float>()[0];
      EXPECT_EQ(0, std::memcmp(&q.offset, &offset, 4)) << "offset " << q.offset << " vs " << offset;
    } else {
      EXPECT_TRUE(same_bits(q.absmax, fx.at("absmax"))) << "absmax";
    }
    // Dequantize bitsandbytes' own quantization and ours, to every output dtype.
    Quant4Tensor golden = q;
    golden.packed = fx.at("packed");
    if (dq) {
      golden.absmax = fx.at("absmax_u8");
      golden.nested_absmax = fx.at("nested_absmax");
      golden.nested_code = fx.at("nested_code");
      golden.offset = fx.at("offset").data<float>()[0];
    } else {
      golden.absmax = fx.at("absmax");
    }
    for (auto [key, dt] : {std::pair<const char*, DType>{"dq_f32", DType::F32},
                           {"dq_bf16", DType::BF16},
                           {"dq_f16", DType::F16}}) {
      EXPECT_TRUE(same_bits(dequantize_4bit(golden, dt), fx.at(key))) << key << " from golden codes";
      EXPECT_TRUE(same_bits(dequantize_4bit(q, dt), fx.at(key))) << key << " from our codes";
    }
    EXPECT_EQ(dequantize_4bit(q).dtype(), x.dtype());
    EXPECT_EQ(dequantize_4bit(q).shape(), x.shape());
  }
}

// Independent reference: for each value, the code nearest (in double) to x/absmax; ties are not expected
// with random inputs. Also the round-trip error bound: |x - deq| <= (half the largest code gap) * absmax.
TEST(Quant4, MatchesNearestCodeReference) {
  for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
    for (int64_t bs : {32, 64, 256, 4096}) {
      const Shape shape = {37, 123};  // 4551 values: partial last block, odd count
      Tensor x = random_tensor(shape, DType::F32, 7 + (uint32_t)bs, 0.3f);
      Quant4Tensor q = quantize_4bit(x, qt, bs);
      const float* xv = x.data<float>();
      const uint8_t* p = q.packed.data<uint8_t>();
      const float* am = q.absmax.data<float>();
      const float* code = code4(qt);
      const int64_t n = x.numel();
      double max_gap = 0;
      std::vector<double> sorted(code, code + 16);
      std::sort(sorted.begin(), sorted.end());
      for (int i = 0; i + 1 < 16; i++) max_gap = std::max(max_gap, sorted[i + 1] - sorted[i]);
      Tensor deq = dequantize_4bit(q, DType::F32);
      int64_t mismatches = 0;
      for (int64_t i = 0; i < n; i++) {
        double a = 0;
        const int64_t b0 = i / bs * bs;
        for (int64_t j = b0; j < std::min(n, b0 + bs); j++) a = std::max(a, (double)std::fabs(xv[j]));
        ASSERT_EQ((float)a, am[i / bs]);
        const double v = xv[i] / a;
        int best = 0;
        for (int c = 1; c < 16; c++)
          if (std::fabs(v - code[c]) < std::fabs(v - code[best])) best = c;
        const int got = (i & 1) ? (p[i / 2] & 15) : (p[i / 2] >> 4);
        if (code[got] != code[best]) mismatches++;
        EXPECT_LE(std::fabs(xv[i] - deq.data<float>()[i]), 0.5 * max_gap * a * (1 + 1e-6) + 1e-30);
      }
      EXPECT_EQ(mismatches, 0) << quant_type_name(qt) << " bs " << bs;
    }
  }
}

TEST(Quant4, NibbleOrderAndPadding) {
  // NF4: -1 -> code 0, +1 -> code 15; element 0 goes to the high nibble; odd count pads with code(0) = 7.
  Tensor x = Tensor::from_f32({1.0f, -1.0f, 0.0f}, {3});
  Quant4Tensor q = quantize_4bit(x, QuantType::NF4, 64);
  ASSERT_EQ(q.packed.numel(), 2);
  EXPECT_EQ(q.packed.data<uint8_t>()[0], 0xF0);
  EXPECT_EQ(q.packed.data<uint8_t>()[1], 0x77);
  // FP4: +1 = code 3 (0b0011), -1 = code 11 (0b1011), a tiny positive value -> code 8 (the "-0" slot,
  // which bitsandbytes' torch bucketize picks for (0, first midpoint)), exact 0 -> code 0.
  Tensor y = Tensor::from_f32({1.0f, -1.0f, 1e-9f, 0.0f}, {4});
  Quant4Tensor f = quantize_4bit(y, QuantType::FP4, 32);
  EXPECT_EQ(f.packed.data<uint8_t>()[0], 0x3B);
  EXPECT_EQ(f.packed.data<uint8_t>()[1], 0x80);
  EXPECT_EQ(dequantize_4bit(f, DType::F32).data<float>()[2], 0.0f);
}

TEST(Quant4, AllZeroBlocks) {
  std::vector<float> v(100, 0.0f);  // one full block of 64, a partial block of 36
  Quant4Tensor q = quantize_4bit(Tensor::from_f32(v, {100}), QuantType::NF4, 64);
  EXPECT_EQ(q.absmax.data<float>()[0], 0.0f);
  EXPECT_EQ(q.absmax.data<float>()[1], 1e-38f);  // bitsandbytes clamps the partial block's absmax
  for (int64_t i = 0; i < q.packed.numel(); i++) EXPECT_EQ(q.packed.data<uint8_t>()[i], 0x77);
  Tensor d = dequantize_4bit(q, DType::F32);
  for (int64_t i = 0; i < 100; i++) EXPECT_EQ(d.data<float>()[i], 0.0f);
}

TEST(Quant4, DoubleQuantErrorIsSmall) {
  // Relative norm error of the double-quantized absmax against the exact absmax: the 8-bit dynamic map
  // keeps it well under 1%.
  Tensor x = random_tensor({256, 256}, DType::BF16, 11, 0.05f);
  Quant4Tensor plain = quantize_4bit(x, QuantType::NF4, 64, false);
  Quant4Tensor nested = quantize_4bit(x, QuantType::NF4, 64, true);
  Tensor a0 = quant4_absmax_f32(plain), a1 = quant4_absmax_f32(nested);
  double num = 0, den = 0;
  for (int64_t i = 0; i < a0.numel(); i++) {
    const double d = (double)a0.data<float>()[i] - a1.data<float>()[i];
    num += d * d;
    den += (double)a0.data<float>()[i] * a0.data<float>()[i];
  }
  EXPECT_LT(std::sqrt(num / den), 5e-3);
  EXPECT_GT(std::sqrt(num / den), 0.0);  // it is quantized
}

TEST(Quant4, Errors) {
  Tensor x = random_tensor({8, 64}, DType::F32, 3);
  EXPECT_NE(error_of([&] { quantize_4bit(x, QuantType::NF4, 48); }).find("invalid block size 48"),
            std::string::npos);
  EXPECT_NE(error_of([&] { quantize_4bit(x, QuantType::NF4, 8192); }).find("power of two from 32 to 4096"),
            std::string::npos);
  EXPECT_NE(error_of([&] { quantize_4bit(x, QuantType::NF4, 16); }).find("invalid block size 16"),
            std::string::npos);
  Tensor ints = Tensor::from_i32({1, 2, 3, 4}, {4});
  EXPECT_NE(error_of([&] { quantize_4bit(ints, QuantType::NF4, 64); }).find("expected F32, BF16 or F16"),
            std::string::npos);
  EXPECT_NE(error_of([&] { quant_type_from_name("int4", "w"); }).find("unknown 4-bit quant type 'int4'"),
            std::string::npos);
  Quant4Tensor q = quantize_4bit(x, QuantType::FP4, 64);
  q.packed = Tensor::zeros({10, 1}, DType::U8);
  EXPECT_NE(error_of([&] { dequantize_4bit(q); }).find("expected 256 U8 bytes"), std::string::npos);
}

// bitsandbytes' CUDA kernels (goldens tests/fixtures/quant/cuda_q4_*, made on a GPU by
// tools/make_quant_cuda_fixtures.py): BnbBackend::Cuda reproduces their bytes, including where they differ
// from the CPU path (FP4's sign of zero, all-zero and partial blocks, subnormals flushed to zero, double
// quant's 8-bit search and torch's CUDA mean). One known gap (bnb_cuda_rules.h) is measured, not hidden: a
// code may differ only where bitsandbytes' approximate reciprocal (1 ulp off) moves the scaled value across
// a threshold, at most 1 in 10^4 codes. (The CUDA kernels match these files exactly: quant_cuda_test.)
namespace {}  // namespace

// bitsandbytes' CUDA dequantize (cuda_dequantized.safetensors) of its CUDA-made bytes against qtune's CPU
// dequantize of the same bytes (which equals bitsandbytes' CPU dequantize, GoldensAreBitExact), into the
// input's dtype: they differ in exactly two ways, both counted here. FP4's code 8 is +0 in the CPU code book
// and -0 (sign times zero) in the CUDA kernel, and the CUDA kernel flushes a subnormal code · absmax to zero.
// The CUDA kernels of quant/cuda reproduce the file exactly (quant_cuda_test).
TEST(Quant4, CpuDequantizeOfCudaGoldensDiffersOnlyInZerosAndSubnormals) {
  const Fixture want = load_fixture("cuda_dequantized.safetensors");
  int checked = 0;
  int64_t signed_zeros = 0, flushed = 0, other = 0;
  for (const auto& kv : want.tensors) {
    if (kv.first.rfind("q4_", 0) != 0) continue;
    SCOPED_TRACE(kv.first);
    const Fixture fx = load_fixture("cuda_" + kv.first + ".safetensors");
    const bool dq = fx.meta.at("double_quant") == "1";
    const QuantType qt = quant_type_from_name(fx.meta.at("quant_type"));
    const Tensor& x = fx.at("input");
    Quant4Tensor q = quantize_4bit(x, qt, std::stoll(fx.meta.at("blocksize")), dq, BnbBackend::Cuda);
    q.packed = fx.at("packed").reshape(q.packed.shape());  // the golden bytes
    if (dq) {
      q.absmax = fx.at("absmax_u8");
      q.nested_absmax = fx.at("nested_absmax");
      q.offset = fx.at("offset").data<float>()[0];
    } else {
      q.absmax = fx.at("absmax");
    }
    const std::vector<float> got = dequantize_4bit(q, DType::F32).to_f32_vector(),
                             ours = dequantize_4bit(q, x.dtype()).to_f32_vector(),
                             theirs = kv.second.to_f32_vector();
    const uint8_t* packed = q.packed.data<uint8_t>();
    for (size_t i = 0; i < theirs.size(); i++) {
      if (std::memcmp(&ours[i], &theirs[i], 4) == 0) continue;
      const int code = (i & 1) ? packed[i / 2] & 15 : packed[i / 2] >> 4;
      if (theirs[i] == 0.0f && std::signbit(theirs[i]) && qt == QuantType::FP4 && code == 8)
        signed_zeros++;
      else if (theirs[i] == 0.0f && std::fabs(got[i]) < FLT_MIN)
        flushed++;
      else
        other++;
    }
    checked++;
  }
  std::printf("[ measured ] CPU vs CUDA dequantize: %lld FP4 code-8 zeros signed, %lld subnormals flushed\n",
              (long long)signed_zeros, (long long)flushed);
  EXPECT_GE(checked, 15);
  EXPECT_EQ(other, 0);
  EXPECT_GE(signed_zeros, 1);
  EXPECT_GE(flushed, 1);
}

TEST(Quant4, CudaBackendMatchesGoldens) {
  int cpu_differs = 0, dq_files = 0;
  qtune_test::CodeDiff d;
  const int files = qtune_test::for_each_fixture("cuda_q4", [&](const Fixture& fx) {
    const QuantType qt = quant_type_from_name(fx.meta.at("quant_type"));
    const int64_t bs = std::stoll(fx.meta.at("blocksize"));
    const bool dq = fx.meta.at("double_quant") == "1";
    const Tensor& x = fx.at("input");
    const Quant4Tensor q = quantize_4bit(x, qt, bs, dq, BnbBackend::Cuda);
    Quant4Tensor golden = q;  // the file's bytes in place of ours
    golden.packed = fx.at("packed");
    if (dq) {
      dq_files++;
      golden.absmax = fx.at("absmax_u8");
      EXPECT_EQ(std::memcmp(&q.offset, fx.at("offset").data<float>(), 4), 0) << "offset " << q.offset;
      EXPECT_TRUE(same_bits(q.nested_absmax, fx.at("nested_absmax"))) << "nested absmax";
      EXPECT_TRUE(same_bits(q.nested_code, fx.at("nested_code"))) << "nested code book";
    } else {
      EXPECT_TRUE(same_bits(q.absmax, fx.at("absmax"))) << "absmax";
    }
    qtune_test::count_quant4_diffs(x, golden, qt, bs, d);
    Quant4Tensor cpu = quantize_4bit(x, qt, bs, dq);
    cpu_differs += !same_bits(cpu.packed, quantize_4bit(x, qt, bs, dq, BnbBackend::Cuda).packed);
  });
  std::printf(
      "[ measured ] bitsandbytes CUDA goldens: %d files, %lld codes, %lld differ (each by bitsandbytes' "
      "approximate reciprocal), %d double-quant offsets\n",
      files, (long long)d.codes, (long long)d.moved, dq_files);
  EXPECT_GE(files, 24);
  EXPECT_EQ(d.unexplained, 0) << "codes that differ for another reason";
  EXPECT_LE(d.moved * 10000, d.codes);
  EXPECT_GE(cpu_differs, 4);  // the inputs hold cases where the two backends part
}
