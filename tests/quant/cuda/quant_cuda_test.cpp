// quant/ CUDA kernels. Quantization against bitsandbytes' CUDA kernels: bit for bit on the goldens they
// wrote on an H200 (cuda_q4_*, cuda_q8_*, cuda_int8_*), and on fresh random tensors against the host model
// of their rules (bnb_cuda_rules.h), which differs from the GPU only in the approximate reciprocal (a code
// may move only where a reciprocal one ulp away moves it: 1 to 12 in 10^5 on these inputs, bounded at
// 1 in 10^3; a wrong rule shows as a code no reciprocal explains). Dequantization against the CPU
// functions: 4-bit (NF4, FP4, plain and double-quant absmax) on 24 fresh random tensors of assorted shapes,
// block sizes and dtypes, 8-bit dynamic blockwise on 20 more, the row-range / rounding-chain
// dequantization the Linear layers use, and LLM.int8 rows: every output value must be identical.
#include "quant/quant_cuda.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "../bnb_cuda_check.h"
#include "core/allocator.h"
#include "core/error.h"
#include "quant/blockwise8.h"
#include "quant/bnb_cuda_rules.h"
#include "quant/codebook.h"
#include "quant/double_quant.h"
#include "quant/int8.h"
#include "quant/quant4.h"

using namespace qtune;

namespace {

#define REQUIRE_GPU()                                             \
  do {                                                            \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU present"; \
  } while (0)

uint64_t seed() {
  static uint64_t s = [] {
    const char* e = std::getenv("QTUNE_TEST_SEED");
    uint64_t v =
        e ? std::strtoull(e, nullptr, 10) : ((uint64_t)std::random_device{}() << 32) ^ std::random_device{}();
    std::printf("[quant cuda tests] QTUNE_TEST_SEED=%llu\n", (unsigned long long)v);
    return v;
  }();
  return s;
}

// Random values with a per-tensor scale, some zero blocks and ties: values exactly on code midpoints of
// a block whose absmax is 1 (v == midpoint must take the lower code on both sides).
Tensor random_tensor(std::mt19937_64& g, const Shape& shape, DType dt, int64_t blocksize, QuantType qt) {
  const int64_t n = shape_numel(shape);
  std::vector<float> v((size_t)n);
  const float scale = std::exp(std::uniform_real_distribution<float>(-4.0f, 3.0f)(g));
  std::normal_distribution<float> nd(0.0f, scale);
  for (float& x : v) x = nd(g);
  const int64_t nb = (n + blocksize - 1) / blocksize;
  if (nb > 2) {
    const int64_t z = (int64_t)(g() % (uint64_t)(nb - 1));  // an all-zero full block
    std::fill(v.begin() + z * blocksize, v.begin() + (z + 1) * blocksize, 0.0f);
    const int64_t t = (z + 1) % (nb - 1);  // a block of ties: absmax 1 and midpoint values
    const float* c = code4(qt);
    float* b = v.data() + t * blocksize;
    b[0] = 1.0f;
    for (int64_t i = 1; i < blocksize; i++) b[i] = (c[i % 15] + c[i % 15 + 1]) / 2.0f;
  }
  return Tensor::from_f32(v, shape).to_dtype(dt);
}

void expect_same_bytes(const Tensor& got_gpu, const Tensor& want, const std::string& what) {
  Tensor got = got_gpu.to(Device::CPU);
  ASSERT_EQ(got.nbytes(), want.nbytes()) << what;
  const uint8_t* a = static_cast<const uint8_t*>(got.raw());
  const uint8_t* b = static_cast<const uint8_t*>(want.raw());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.nbytes(); i++)
    if (a[i] != b[i] && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.nbytes() << " bytes differ, first at byte "
                     << first;
}

struct Case4 {
  Shape shape;
  int64_t blocksize;
  DType dtype;
  QuantType qt;
  bool dq;
};

std::vector<Case4> cases4() {
  const DType dts[3] = {DType::F32, DType::BF16, DType::F16};
  const Shape shapes[8] = {{4096},     {333, 77},   {64, 4096}, {7},
                           {1, 12345}, {96, 3, 32}, {1000, 33}, {2, 70001}};
  const int64_t bss[8] = {64, 32, 4096, 128, 256, 512, 1024, 2048};
  std::vector<Case4> c;
  for (int i = 0; i < 24; i++)
    c.push_back({shapes[i % 8], bss[(i * 3) % 8], dts[i % 3], i % 2 ? QuantType::FP4 : QuantType::NF4,
                 (i / 2) % 2 == 1});
  return c;
}

// Codes of the GPU against the host model: none differs for another reason than the reciprocal, and few
// differ at all (1 to 12 in 10^5 on these inputs; bounded at 1 in 10^3).
void expect_only_reciprocal_moves(const qtune_test::CodeDiff& d, const char* kind) {
  std::printf("[ measured ] %s codes: %lld, moved by the approximate reciprocal: %lld\n", kind,
              (long long)d.codes, (long long)d.moved);
  EXPECT_EQ(d.unexplained, 0) << kind;
  EXPECT_LE(d.moved * 1000, d.codes) << kind;
}

}  // namespace

TEST(QuantCuda, Quantize4bitFollowsBitsandbytesCudaRulesOn24RandomTensors) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed());
  qtune_test::CodeDiff d;
  for (const Case4& c : cases4()) {
    const std::string what = shape_str(c.shape) + " bs " + std::to_string(c.blocksize) + " " +
                             dtype_name(c.dtype) + " " + quant_type_name(c.qt) + (c.dq ? " dq" : "");
    SCOPED_TRACE(what);
    Tensor x = random_tensor(g, c.shape, c.dtype, c.blocksize, c.qt);
    Quant4Tensor want = quantize_4bit(x, c.qt, c.blocksize, c.dq, BnbBackend::Cuda);
    Quant4Tensor got = quantize_4bit_cuda(x.to(Device::CUDA), c.qt, c.blocksize, c.dq);
    ASSERT_TRUE(got.packed.is_cuda());
    EXPECT_EQ(got.nested, want.nested);
    if (c.dq) {  // the nested absmax is a max, so exact; the offset is torch's CUDA mean (an H200's here)
      expect_same_bytes(got.nested_absmax, want.nested_absmax, what + " nested_absmax");
      expect_same_bytes(got.nested_code, want.nested_code, what + " nested_code");
      EXPECT_EQ(std::memcmp(&got.offset, &want.offset, 4), 0) << got.offset << " vs " << want.offset;
    } else {
      expect_same_bytes(got.absmax, want.absmax, what + " absmax");
    }
    qtune_test::count_quant4_diffs(x, got, c.qt, c.blocksize, d);
    // Dequantize the CPU-made tensor on the GPU into every output dtype: the CPU's values, except that FP4's
    // code 8 is -0 on the GPU (bitsandbytes' CUDA kernel) and +0 on the CPU.
    Quant4Tensor cpu = quantize_4bit(x, c.qt, c.blocksize, c.dq);
    Quant4Tensor up = quant4_to(cpu, Device::CUDA);
    for (DType out : {DType::F32, DType::BF16, DType::F16}) {
      const std::vector<float> g = dequantize_4bit_cuda(up, out).to(Device::CPU).to_f32_vector(),
                               h = dequantize_4bit(cpu, out).to_f32_vector();
      int64_t bad = 0;
      for (size_t i = 0; i < h.size(); i++)
        bad += std::memcmp(&g[i], &h[i], 4) != 0 && !(g[i] == 0.0f && h[i] == 0.0f);
      EXPECT_EQ(bad, 0) << what << " dequantize to " << dtype_name(out);
    }
  }
  expect_only_reciprocal_moves(d, "4-bit");
}

// The kernels against the files bitsandbytes' CUDA kernels wrote (tools/make_quant_cuda_fixtures.py): 4-bit
// with and without double quant (incl. subnormals, zero and partial blocks), 8-bit blockwise, and LLM.int8's
// row quantization (weights without a threshold, activations with one), every byte.
TEST(QuantCuda, QuantizeMatchesBitsandbytesCudaGoldens) {
  REQUIRE_GPU();
  const int q4 = qtune_test::for_each_fixture("cuda_q4", [](const qtune_test::Fixture& fx) {
    const QuantType qt = quant_type_from_name(fx.meta.at("quant_type"));
    const int64_t bs = std::stoll(fx.meta.at("blocksize"));
    const bool dq = fx.meta.at("double_quant") == "1";
    Quant4Tensor q = quantize_4bit_cuda(fx.at("input").to(Device::CUDA), qt, bs, dq);
    EXPECT_TRUE(qtune_test::same_bits(q.packed.to(Device::CPU).reshape({fx.at("packed").numel()}),
                                      fx.at("packed").reshape({fx.at("packed").numel()})))
        << "packed";
    if (!dq) {
      EXPECT_TRUE(qtune_test::same_bits(q.absmax.to(Device::CPU), fx.at("absmax"))) << "absmax";
      return;
    }
    EXPECT_TRUE(qtune_test::same_bits(q.absmax.to(Device::CPU), fx.at("absmax_u8"))) << "absmax codes";
    EXPECT_TRUE(qtune_test::same_bits(q.nested_absmax.to(Device::CPU), fx.at("nested_absmax")));
    EXPECT_TRUE(qtune_test::same_bits(q.nested_code.to(Device::CPU), fx.at("nested_code")));
    EXPECT_EQ(std::memcmp(&q.offset, fx.at("offset").data<float>(), 4), 0) << "offset";
  });
  const int q8 = qtune_test::for_each_fixture("cuda_q8", [](const qtune_test::Fixture& fx) {
    const int64_t bs = std::stoll(fx.meta.at("blocksize"));
    Blockwise8 b =
        quantize_blockwise_8bit_cuda(fx.at("input").to(Device::CUDA), create_dynamic_map(true), bs);
    EXPECT_TRUE(qtune_test::same_bits(b.q.to(Device::CPU), fx.at("q"))) << "codes";
    EXPECT_TRUE(qtune_test::same_bits(b.absmax.to(Device::CPU), fx.at("absmax"))) << "absmax";
  });
  const int i8 = qtune_test::for_each_fixture("cuda_int8", [](const qtune_test::Fixture& fx) {
    const Tensor& x = fx.at("input");
    const int64_t rows = x.size(0), cols = x.size(1);
    const float thr = std::stof(fx.meta.at("threshold"));
    Tensor xd = x.to(Device::CUDA), q = Tensor::empty({rows, cols}, DType::I8, Device::CUDA),
           sc = Tensor::empty({rows}, DType::F32, Device::CUDA),
           fl = Tensor::zeros({cols}, DType::U8, Device::CUDA);
    int8_quant_rows_cuda(xd.raw(), x.dtype(), rows, cols, thr, true, q.data<int8_t>(), sc.data<float>(),
                         thr > 0.0f ? fl.data<uint8_t>() : nullptr, 0, BnbBackend::Cuda);
    EXPECT_TRUE(qtune_test::same_bits(sc.to(Device::CPU), fx.at("scale"))) << "scale";
    // bitsandbytes zeroes the outlier columns' codes; qtune's kernel keeps them (its epilogue subtracts
    // their products again), so the codes are compared outside those columns, and the flags against them.
    std::vector<uint8_t> out((size_t)cols, 0);
    const Tensor& oc = fx.at("outlier_cols");
    for (int64_t j = 0; j < oc.numel(); j++) out[(size_t)oc.data<int64_t>()[j]] = 1;
    if (thr > 0.0f) EXPECT_EQ(qtune_test::bytes_of(fl), out) << "outlier columns";
    const std::vector<uint8_t> got = qtune_test::bytes_of(q), want = qtune_test::bytes_of(fx.at("q"));
    int64_t bad = 0;
    for (int64_t e = 0; e < rows * cols; e++)
      bad += !out[(size_t)(e % cols)] && got[(size_t)e] != want[(size_t)e];
    EXPECT_EQ(bad, 0) << "codes";
  });
  std::printf("[ measured ] bitsandbytes CUDA goldens reproduced: %d 4-bit, %d 8-bit, %d int8 files\n", q4,
              q8, i8);
  EXPECT_GE(q4, 24);
  EXPECT_GE(q8, 8);
  EXPECT_GE(i8, 5);
}

// Dequantization against bitsandbytes' CUDA dequantize_4bit / dequantize_blockwise of the smaller golden
// files (cuda_dequantized.safetensors, in each input's dtype), incl. blocks whose absmax is so small that
// code · absmax is subnormal (flushed to zero there, kept on the CPU).
TEST(QuantCuda, DequantizeMatchesBitsandbytesCudaGoldens) {
  REQUIRE_GPU();
  const qtune_test::Fixture want = qtune_test::load_fixture("cuda_dequantized.safetensors");
  int checked = 0;
  int64_t cpu_differs = 0;
  for (const auto& kv : want.tensors) {
    SCOPED_TRACE(kv.first);
    const qtune_test::Fixture fx = qtune_test::load_fixture("cuda_" + kv.first + ".safetensors");
    const Tensor& x = fx.at("input");
    const int64_t bs = std::stoll(fx.meta.at("blocksize"));
    Tensor got;
    if (kv.first.rfind("q4_", 0) == 0) {
      const Quant4Tensor q =
          quantize_4bit_cuda(x.to(Device::CUDA), quant_type_from_name(fx.meta.at("quant_type")), bs,
                             fx.meta.at("double_quant") == "1");
      got = dequantize_4bit_cuda(q, x.dtype()).to(Device::CPU);
      cpu_differs += !qtune_test::same_bits(dequantize_4bit(quant4_to(q, Device::CPU), x.dtype()), kv.second);
    } else {
      const std::vector<float> code = create_dynamic_map(true);
      const Blockwise8 b = quantize_blockwise_8bit_cuda(x.to(Device::CUDA), code, bs);
      got = dequantize_blockwise_8bit_cuda(b, code, x.dtype()).to(Device::CPU);
    }
    EXPECT_TRUE(qtune_test::same_bits(got.reshape({got.numel()}), kv.second.reshape({kv.second.numel()})));
    checked++;
  }
  std::printf(
      "[ measured ] bitsandbytes CUDA dequantize reproduced on %d tensors; the CPU arithmetic differs on "
      "%lld\n",
      checked, (long long)cpu_differs);
  EXPECT_GE(checked, 15);
}

// A full block whose NaNs fill some lanes' whole share: those lanes' partial absmax stays -FLT_MAX, which
// the warp's max must not turn into +FLT_MAX (bitsandbytes' block reduce keeps the largest |x|).
TEST(QuantCuda, NanLanesKeepTheBlockAbsmax) {
  REQUIRE_GPU();
  std::vector<float> v(128);
  for (size_t i = 0; i < v.size(); i++) v[i] = 0.01f * (float)((int)i - 60);
  for (size_t i : {0, 32, 5, 37, 64, 96}) v[i] = NAN;  // lanes 0 and 5 of block 0, lane 0 of block 1
  Tensor x = Tensor::from_f32(v, {128});
  const Quant4Tensor got = quantize_4bit_cuda(x.to(Device::CUDA), QuantType::NF4, 64);
  const Quant4Tensor want = quantize_4bit(x, QuantType::NF4, 64, false, BnbBackend::Cuda);
  expect_same_bytes(got.absmax, want.absmax, "4-bit absmax");
  expect_same_bytes(got.packed, want.packed, "4-bit codes");
  const std::vector<float> code = create_dynamic_map(true);
  const Blockwise8 b = quantize_blockwise_8bit_cuda(x.to(Device::CUDA), code, 64);
  Tensor q = Tensor::empty({128}, DType::U8), am = Tensor::empty({2}, DType::F32);
  quantize_8bit_cuda_rules_raw(x.raw(), DType::F32, 128, code.data(), 64, q.data<uint8_t>(),
                               am.data<float>());
  expect_same_bytes(b.absmax, am, "8-bit absmax");
  expect_same_bytes(b.q, q, "8-bit codes");
  EXPECT_EQ(am.data<float>()[0], std::fabs(v[1]));  // the largest finite |x| of block 0
}

TEST(QuantCuda, Dequantize4bitRangesAndRoundingStepsEqualCpu) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 1);
  Tensor x = random_tensor(g, {37, 160}, DType::F32, 64, QuantType::NF4);  // rows straddle blocks
  for (bool dq : {false, true}) {
    Quant4Tensor q = quantize_4bit(x, QuantType::NF4, 64, dq);
    Quant4Tensor up = quant4_to(q, Device::CUDA);
    std::vector<float> full = dequantize_4bit(q, DType::F32).to_f32_vector();
    struct R {
      int64_t e0, count;
    };
    for (R r : {R{0, 37 * 160}, R{160 * 5, 160 * 7}, R{37, 1001}, R{3, 5}, R{37 * 160 - 33, 33}})
      for (DType r1 : {DType::F32, DType::BF16, DType::F16})
        for (DType r2 : {DType::F32, DType::BF16}) {
          Tensor out = Tensor::empty({r.count}, DType::BF16, Device::CUDA);
          dequantize_4bit_cuda_raw(up.packed.data<uint8_t>(), absmax4_view(up), r.e0, r.count, 64,
                                   QuantType::NF4, DType::BF16, out.raw(), 0, r1, r2);
          std::vector<float> got = out.to_f32_vector();
          auto rnd = [](DType d, float f) {
            return d == DType::BF16  ? bf16_to_f32(f32_to_bf16(f))
                   : d == DType::F16 ? f16_to_f32(f32_to_f16(f))
                                     : f;
          };
          int bad = 0;
          for (int64_t i = 0; i < r.count; i++) {
            const float want = rnd(DType::BF16, rnd(r2, rnd(r1, full[(size_t)(r.e0 + i)])));
            bad += std::memcmp(&got[(size_t)i], &want, 4) != 0;
          }
          EXPECT_EQ(bad, 0) << "e0 " << r.e0 << " count " << r.count << " r1 " << dtype_name(r1) << " r2 "
                            << dtype_name(r2) << (dq ? " dq" : "");
        }
  }
}

TEST(QuantCuda, Blockwise8bitFollowsBitsandbytesCudaRulesOn20RandomTensors) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 2);
  qtune_test::CodeDiff d;
  const DType dts[3] = {DType::F32, DType::BF16, DType::F16};
  const Shape shapes[5] = {{4096}, {333, 77}, {5000}, {31}, {64, 1025}};
  const int64_t bss[6] = {256, 32, 2048, 64, 4096, 128};
  const Quant8Lut signed_lut(create_dynamic_map(true)), unsigned_lut(create_dynamic_map(false));
  for (int i = 0; i < 20; i++) {
    const bool is_signed = i % 4 != 3;
    const Quant8Lut& lut = is_signed ? signed_lut : unsigned_lut;
    const Shape shape = shapes[i % 5];
    const int64_t bs = bss[i % 6];
    const DType dt = dts[i % 3];
    const std::string what = shape_str(shape) + " bs " + std::to_string(bs) + " " + dtype_name(dt) +
                             (is_signed ? " signed" : " unsigned");
    SCOPED_TRACE(what);
    std::vector<float> v((size_t)shape_numel(shape));
    std::normal_distribution<float> nd(0.0f, std::exp(std::uniform_real_distribution<float>(-5.0f, 2.0f)(g)));
    for (float& f : v) f = is_signed ? nd(g) : std::fabs(nd(g));
    if (v.size() > 2 * (size_t)bs) std::fill(v.begin() + bs, v.begin() + 2 * bs, 0.0f);  // a zero block
    Tensor x = Tensor::from_f32(v, shape).to_dtype(dt);
    Blockwise8 got = quantize_blockwise_8bit_cuda(x.to(Device::CUDA), lut.code(), bs);
    Tensor q = Tensor::empty(x.shape(), DType::U8),
           am = Tensor::empty({(x.numel() + bs - 1) / bs}, DType::F32);
    quantize_8bit_cuda_rules_raw(x.raw(), dt, x.numel(), lut.code().data(), bs, q.data<uint8_t>(),
                                 am.data<float>());
    expect_same_bytes(got.absmax, am, what + " absmax");
    const std::vector<float> xv = x.to_dtype(DType::F32).to_f32_vector(), av = am.to_f32_vector();
    qtune_test::count_code_diffs(
        x.numel(), q.data<uint8_t>(), qtune_test::bytes_of(got.q).data(),
        [&](int64_t k) { return bnb_cuda_reciprocal(av[(size_t)(k / bs)]); },
        [&](int64_t k, float inv) {
          return bnb_cuda_code8(lut.code().data(), bnb_cuda_scaled(xv[(size_t)k], inv));
        },
        d);
    Blockwise8 want = quantize_blockwise_8bit(x, lut, bs);
    Blockwise8 up{want.q.to(Device::CUDA), want.absmax.to(Device::CUDA), bs};
    for (DType out : {DType::F32, DType::BF16, DType::F16})
      expect_same_bytes(dequantize_blockwise_8bit_cuda(up, lut.code(), out),
                        dequantize_blockwise_8bit(want, lut.code(), out),
                        what + " dequantize to " + dtype_name(out));
  }
  expect_only_reciprocal_moves(d, "8-bit");
}

TEST(QuantCuda, Int8RowQuantizationEqualsCpuOrFollowsBitsandbytesCuda) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 3);
  qtune_test::CodeDiff all;
  for (DType dt : {DType::F32, DType::BF16, DType::F16})
    for (Shape s :
         {Shape{77, 333}, Shape{5, 4096}, Shape{1, 31}, Shape{3, 8200}, Shape{9, 14336}, Shape{2, 16392}}) {
      std::vector<float> v((size_t)shape_numel(s));
      std::normal_distribution<float> nd(0.0f, 0.7f);
      for (float& f : v) f = nd(g);
      std::fill(v.begin(), v.begin() + s[1], 0.0f);  // a zero row
      Tensor x = Tensor::from_f32(v, s).to_dtype(dt);
      // As bitsandbytes stores a weight: an f16 copy, no threshold.
      Int8Rowwise want = int8_vectorwise_quant(x.to_dtype(DType::F16), 0.0f);
      Tensor q = Tensor::empty(s, DType::I8, Device::CUDA),
             sc = Tensor::empty({s[0]}, DType::F32, Device::CUDA);
      Tensor xd = x.to(Device::CUDA);
      const std::string what = shape_str(s) + " " + dtype_name(dt);
      // The CPU path's scale (the forward's activations): every byte equal.
      int8_quant_rows_cuda(xd.raw(), dt, s[0], s[1], 0.0f, true, q.data<int8_t>(), sc.data<float>(), nullptr,
                           0, BnbBackend::Cpu);
      expect_same_bytes(q, want.q, what + " q");
      expect_same_bytes(sc, want.scale, what + " scale");
      // bitsandbytes' CUDA scale (weights quantized on the GPU).
      int8_quant_rows_cuda(xd.raw(), dt, s[0], s[1], 0.0f, true, q.data<int8_t>(), sc.data<float>(), nullptr,
                           0, BnbBackend::Cuda);
      expect_same_bytes(sc, want.scale, what + " scale");
      const qtune_test::CodeDiff d = qtune_test::int8_code_diffs(x.to_dtype(DType::F16), want, q);
      EXPECT_EQ(d.unexplained, 0) << what;
      all.add(d);
      // Dequantization of the CPU's codes equals the CPU's.
      Tensor deq = Tensor::empty(s, DType::F32, Device::CUDA);
      Tensor wq = want.q.to(Device::CUDA);
      int8_dequantize_rows_cuda_raw(wq.data<int8_t>(), sc.data<float>(), 0, s[0], s[1], DType::F32, deq.raw(),
                                    0);
      expect_same_bytes(deq, int8_vectorwise_dequant(want), what + " dequantized");
    }
  expect_only_reciprocal_moves(all, "int8");
}

// Row quantization with a threshold and the outlier listing of the int8 forward against the CPU's
// int8_vectorwise_quant of f16(x): the row scales, the codes outside outlier columns and the listed outlier
// columns are identical. Tiny values with a tiny threshold put the
// outlier test in f16's subnormal range, where rounding to f16 moves bf16 values across the threshold; shapes
// for one and several warps per row, block-per-row and scalar paths, and row lengths that are not a multiple
// of the listing's 16 flags.
TEST(QuantCuda, Int8OutlierColumnsEqualTheCpus) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 7);
  struct Case {
    float sd, thr;
  };
  for (Case cs : {Case{1.0f, 2.5f}, Case{1.0e-6f, 1.0e-6f}, Case{3.0e4f, 7.0e4f}})
    for (DType dt : {DType::BF16, DType::F16, DType::F32})
      for (Shape s : {Shape{37, 512}, Shape{5, 4104}, Shape{7, 12000}, Shape{3, 333}}) {
        std::vector<float> v((size_t)shape_numel(s));
        std::normal_distribution<float> nd(0.0f, cs.sd);
        for (float& f : v) f = nd(g);
        Tensor x = Tensor::from_f32(v, s).to_dtype(dt);
        Int8Rowwise want = int8_vectorwise_quant(x.to_dtype(DType::F16), cs.thr);
        const int64_t rows = s[0], K = s[1];
        Tensor q = Tensor::empty(s, DType::I8, Device::CUDA),
               sc = Tensor::empty({rows}, DType::F32, Device::CUDA);
        Tensor fl = Tensor::zeros({K}, DType::U8, Device::CUDA),
               cols = Tensor::empty({K}, DType::I32, Device::CUDA),
               count = Tensor::empty({1}, DType::I32, Device::CUDA),
               done = Tensor::zeros({1}, DType::I32, Device::CUDA);
        Tensor xd = x.to(Device::CUDA);
        const std::string what = shape_str(s) + " " + dtype_name(dt) + " thr " + std::to_string(cs.thr);
        // Twice on the same flags: the listing clears them (and its counter) for the next call; the second
        // listing in one block of 1024 threads (the capped grid of the forward's side stream).
        for (int rep = 0; rep < 2; rep++) {
          int8_quant_rows_cuda(xd.raw(), dt, rows, K, cs.thr, true, q.data<int8_t>(), sc.data<float>(),
                               fl.data<uint8_t>(), 0, BnbBackend::Cpu);
          Int8Epilogue e;
          e.qa = q.data<int8_t>();
          e.x = xd.raw();
          e.x_dtype = dt;
          e.N = rows;
          e.K = K;
          uint32_t* done_p = reinterpret_cast<uint32_t*>(done.data<int32_t>());
          int8_outliers_cuda(fl.data<uint8_t>(), e, cols.data<int32_t>(), count.data<int32_t>(), nullptr,
                             nullptr, 0, nullptr, nullptr, done_p, rep, 0);
          expect_same_bytes(sc, want.scale, what + " scale");
          const int n = count.to(Device::CPU).data<int32_t>()[0];
          ASSERT_EQ((size_t)n, want.outlier_cols.size()) << what << " call " << rep;
          Tensor cols_cpu = cols.to(Device::CPU);
          for (int64_t j = 0; j < n; j++)
            EXPECT_EQ(cols_cpu.data<int32_t>()[j], want.outlier_cols[(size_t)j]) << what << " outlier " << j;
        }
        expect_same_bytes(fl, Tensor::zeros({K}, DType::U8), what + " flags after the listing");
        EXPECT_EQ(done.to(Device::CPU).data<int32_t>()[0], 0) << what;
        const int n = (int)want.outlier_cols.size();
        std::vector<uint8_t> is_out((size_t)K, 0);
        for (int64_t j = 0; j < n; j++) is_out[(size_t)want.outlier_cols[(size_t)j]] = 1;
        Tensor qc = q.to(Device::CPU);
        int bad = 0;
        for (int64_t i = 0; i < rows * K; i++)
          bad += !is_out[(size_t)(i % K)] && qc.data<int8_t>()[i] != want.q.data<int8_t>()[i];
        EXPECT_EQ(bad, 0) << what << " codes";
        std::printf("[ measured ] %s: %d outlier columns\n", what.c_str(), n);
      }
}

TEST(QuantCuda, BadArgumentsAreErrors) {
  REQUIRE_GPU();
  Tensor x = Tensor::zeros({64}, DType::F32, Device::CUDA);
  EXPECT_THROW(quantize_4bit_cuda(x, QuantType::NF4, 48), Error);    // not a power of two
  EXPECT_THROW(quantize_4bit_cuda(x, QuantType::NF4, 8192), Error);  // too large
  EXPECT_THROW(quantize_4bit_cuda(Tensor::zeros({64}, DType::F32), QuantType::NF4, 64), Error);  // CPU tensor
  EXPECT_THROW(quantize_4bit_cuda(Tensor::zeros({64}, DType::I32, Device::CUDA), QuantType::NF4, 64), Error);
  Quant4Tensor q = quantize_4bit_cuda(x, QuantType::NF4, 64);
  q.packed = Tensor::zeros({31, 1}, DType::U8, Device::CUDA);  // wrong packed size
  EXPECT_THROW(dequantize_4bit_cuda(q, DType::BF16), Error);
  // The fused GEMV: I not a multiple of 32, misaligned weights, rows other than 1 or 2, a bad block size.
  {
    Quant4Tensor w = quantize_4bit_cuda(Tensor::zeros({4, 64}, DType::F32, Device::CUDA), QuantType::NF4, 64);
    Tensor xg = Tensor::zeros({2, 64}, DType::BF16, Device::CUDA);
    Tensor y = Tensor::zeros({2, 4}, DType::BF16, Device::CUDA);
    Gemv4Args a;
    a.packed = w.packed.data<uint8_t>();
    a.absmax = absmax4_view(w);
    a.x = xg.raw();
    a.out = y.raw();
    a.O = 4;
    a.I = 64;
    gemv_4bit_cuda(a, 0);  // valid
    Gemv4Args b = a;
    b.I = 48;
    EXPECT_THROW(gemv_4bit_cuda(b, 0), Error);
    b = a;
    b.packed = a.packed + 1;
    EXPECT_THROW(gemv_4bit_cuda(b, 0), Error);
    b = a;
    b.rows = 3;
    EXPECT_THROW(gemv_4bit_cuda(b, 0), Error);
    b = a;
    b.blocksize = 48;
    EXPECT_THROW(gemv_4bit_cuda(b, 0), Error);
  }
  // The int8 epilogue with outlier columns but without what the outlier kernel gathers for it, or with
  // fewer than 8 gathered columns.
  Tensor acc = Tensor::zeros({4, 8}, DType::I32, Device::CUDA),
         cnt = Tensor::zeros({1}, DType::I32, Device::CUDA);
  Int8Epilogue e;
  e.N = 4;
  e.K = 16;
  e.O = 8;
  e.count = cnt.data<int32_t>();
  e.cap = 64;
  EXPECT_THROW(int8_epilogue_cuda(acc.data<int32_t>(), e, 0), Error);
  Tensor qa_c = Tensor::zeros({4, 8}, DType::I8, Device::CUDA),
         x_c = Tensor::zeros({4, 8}, DType::F32, Device::CUDA),
         qout = Tensor::zeros({8, 8}, DType::I8, Device::CUDA),
         wout = Tensor::zeros({64, 8}, DType::F32, Device::CUDA);
  e.qa_c = qa_c.data<int8_t>();
  e.x_c = x_c.data<float>();
  e.qout = qout.data<int8_t>();
  e.wout = wout.data<float>();
  e.cap = 4;
  EXPECT_THROW(int8_epilogue_cuda(acc.data<int32_t>(), e, 0), Error);
}

// The weights the fused GEMV multiplies, in float64: bf16(code) · absmax (the code value enters the tensor
// cores in bf16, the absmax scales the f32 partial sums), so only the f32 summation order differs.
std::vector<double> gemv4_weights(const Quant4Tensor& q) {
  const std::vector<float> am = quant4_absmax_f32(q).to_f32_vector();
  const uint8_t* pk = q.packed.data<uint8_t>();
  const float* code = code4(q.quant_type);
  const int64_t n = q.numel();
  std::vector<double> wd((size_t)n);
  for (int64_t e = 0; e < n; e++) {
    const int nib = (e % 2 == 0) ? pk[e / 2] >> 4 : pk[e / 2] & 15;
    wd[(size_t)e] = (double)bf16_to_f32(f32_to_bf16(code[nib])) * am[(size_t)(e / q.blocksize)];
  }
  return wd;
}

// ‖got − w·x‖ / ‖w·x‖ over rows of x [rows, I] and w [O, I].
double gemv_rel_err(const std::vector<float>& got, const std::vector<double>& w, const std::vector<float>& x,
                    int rows, int64_t O, int64_t I) {
  double num = 0, den = 0;
  for (int r = 0; r < rows; r++)
    for (int64_t o = 0; o < O; o++) {
      double ref = 0;
      for (int64_t i = 0; i < I; i++) ref += (double)x[(size_t)(r * I + i)] * w[(size_t)(o * I + i)];
      num += (got[(size_t)(r * O + o)] - ref) * (got[(size_t)(r * O + o)] - ref);
      den += ref * ref;
    }
  return std::sqrt(num / den);
}

Gemv4Args gemv4_args(const Quant4Tensor& q, const Tensor& x, Tensor& y, int rows) {
  Gemv4Args a;
  a.packed = q.packed.data<uint8_t>();
  a.absmax = absmax4_view(q);
  a.blocksize = q.blocksize;
  a.quant_type = q.quant_type;
  a.x = x.raw();
  a.out = y.raw();
  a.out_dtype = y.dtype();
  a.O = q.shape[0];
  a.I = q.shape[1];
  a.rows = rows;
  return a;
}

// The fused GEMV against the float64 evaluation. Partial 16-row groups, rows that are not a multiple of the
// kernel's 256-weight step, runs of several groups per block (O > 16 · SMs), block sizes 32 (two absmax per
// lane pair) and 64-256, NF4 and FP4, plain and nested absmax, one and two rows of x, each load order: the
// weights read after the wait for the kernel before and x behind them (I <= 4096), before that wait
// (weights_static), and x first (I > 4096; 2 x 16416 is more than the kernel's registers hold, so the rest
// is loaded after). Both ways of applying the absmax: per lane (block size 32, or an odd number of 32-weight
// chunks per row: I = 160, 1056, 4128, 16416, where a lane pair's chunks can straddle a block) and per lane
// pair (the other cases).
TEST(QuantCuda, Gemv4bitMatchesFloat64) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 4);
  struct Case {
    int64_t O, I, bs;
    bool dq;
    QuantType qt;
  };
  for (const Case& c :
       {Case{37, 64, 64, false, QuantType::NF4}, Case{37, 4128, 64, true, QuantType::NF4},
        Case{37, 4128, 32, false, QuantType::FP4}, Case{301, 1056, 32, true, QuantType::NF4},
        Case{2200, 384, 128, true, QuantType::NF4}, Case{4100, 160, 256, false, QuantType::FP4},
        Case{21, 16416, 64, false, QuantType::NF4}, Case{301, 1024, 64, true, QuantType::FP4},
        Case{37, 4160, 64, true, QuantType::NF4}, Case{21, 16448, 64, false, QuantType::NF4},
        Case{19, 4160, 64, false, QuantType::FP4}}) {
    const int64_t O = c.O, I = c.I;
    std::vector<float> wv((size_t)(O * I)), xv((size_t)(2 * I));
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (float& v : wv) v = nd(g);
    for (float& v : xv) v = bf16_to_f32(f32_to_bf16(nd(g)));
    Quant4Tensor q = quantize_4bit(Tensor::from_f32(wv, {O, I}), c.qt, c.bs, c.dq);
    const std::vector<double> wd = gemv4_weights(q);
    Quant4Tensor up = quant4_to(q, Device::CUDA);
    Tensor x = Tensor::from_f32(xv, {2, I}).to_dtype(DType::BF16).to(Device::CUDA);
    for (int rows : {1, 2})
      for (bool early : {false, true}) {
        Tensor y = Tensor::empty({rows, O}, DType::F32, Device::CUDA);
        Gemv4Args a = gemv4_args(up, x, y, rows);
        a.weights_static = early;
        gemv_4bit_cuda(a, 0);
        EXPECT_LE(gemv_rel_err(y.to_f32_vector(), wd, xv, rows, O, I), 1e-5)
            << "O " << O << " I " << I << " bs " << c.bs << (c.dq ? " dq" : "") << " rows " << rows
            << (early ? " weights_static" : "");
      }
  }
}

// The row sums of a block's warps are added in warp order, so repeated launches give the same bits whatever
// order the warps finish in: here 9 warps share each row (I = 4160, 17 steps), the load order changes
// between launches (weights read before or after the wait), and every launch must equal the first.
TEST(QuantCuda, Gemv4bitIsDeterministic) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t O = 37, I = 4160;
  for (bool dq : {false, true}) {
    std::vector<float> wv((size_t)(O * I)), xv((size_t)(2 * I));
    for (float& v : wv) v = nd(g);
    for (float& v : xv) v = nd(g);
    Quant4Tensor q =
        quant4_to(quantize_4bit(Tensor::from_f32(wv, {O, I}), QuantType::NF4, 64, dq), Device::CUDA);
    Tensor x = Tensor::from_f32(xv, {2, I}).to_dtype(DType::BF16).to(Device::CUDA);
    Tensor y = Tensor::empty({2, O}, DType::F32, Device::CUDA);
    std::vector<uint8_t> first;
    int differ = 0;
    for (int k = 0; k < 24; k++) {
      Gemv4Args a = gemv4_args(q, x, y, 1 + k % 2);
      a.weights_static = (k / 2) % 2 == 0;
      gemv_4bit_cuda(a, 0);
      std::vector<uint8_t> b = qtune_test::bytes_of(y);
      b.resize((size_t)(O * 4));  // the first row: every launch writes it
      if (k == 0) first = b;
      differ += b != first;
    }
    EXPECT_EQ(differ, 0) << (dq ? "dq" : "plain");
  }
}

// Several weights sharing x in one launch (q/k/v, gate/up) give exactly what one launch per weight gives:
// parts of different heights (partial groups, a part of one group), block runs that span two parts
// (O = 4096 + 1024 + 1024 at I = 512: 384 groups, three per block), each part's own bias dtype or none,
// plain and nested absmax, NF4 and FP4, one and two rows, each load order, and the layouts the one-launch
// kernel leaves to a launch per weight (an odd number of 32-weight chunks per row, block size 32); then the
// misuses.
TEST(QuantCuda, Gemv4bitPartsEqualOneLaunchPerWeight) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 6);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Case {
    std::vector<int64_t> Os;
    int64_t I, bs;
    bool dq;
    QuantType qt;
  };
  for (const Case& c :
       {Case{{37, 16, 301}, 1024, 64, true, QuantType::NF4},
        Case{{37, 16, 301}, 1024, 64, false, QuantType::FP4},
        Case{{4096, 1024, 1024}, 512, 64, true, QuantType::NF4},
        Case{{2200, 2200}, 384, 64, false, QuantType::NF4}, Case{{37, 21}, 4160, 64, true, QuantType::NF4},
        Case{{19, 40}, 4160, 64, false, QuantType::FP4}, Case{{37, 21}, 1056, 64, true, QuantType::NF4},
        Case{{37, 21}, 1024, 32, false, QuantType::NF4}}) {
    const int64_t I = c.I;
    std::vector<float> xv((size_t)(2 * I));
    for (float& v : xv) v = bf16_to_f32(f32_to_bf16(nd(g)));
    Tensor x = Tensor::from_f32(xv, {2, I}).to_dtype(DType::BF16).to(Device::CUDA);
    std::vector<Quant4Tensor> qs;
    std::vector<Tensor> biases;
    for (size_t j = 0; j < c.Os.size(); j++) {
      const int64_t O = c.Os[j];
      std::vector<float> wv((size_t)(O * I)), bv((size_t)O);
      for (float& v : wv) v = nd(g);
      for (float& v : bv) v = nd(g);
      qs.push_back(quant4_to(quantize_4bit(Tensor::from_f32(wv, {O, I}), c.qt, c.bs, c.dq), Device::CUDA));
      const DType bt = j == 0 ? DType::BF16 : DType::F32;  // the last part has none
      biases.push_back(j + 1 < c.Os.size() ? Tensor::from_f32(bv, {O}).to_dtype(bt).to(Device::CUDA)
                                           : Tensor());
    }
    for (int rows : {1, 2})
      for (bool early : {false, true}) {
        std::vector<Tensor> one, fused;
        std::vector<Gemv4Args> parts;
        for (size_t j = 0; j < qs.size(); j++) {
          one.push_back(Tensor::empty({rows, c.Os[j]}, DType::BF16, Device::CUDA));
          fused.push_back(Tensor::empty({rows, c.Os[j]}, DType::BF16, Device::CUDA));
          Gemv4Args a = gemv4_args(qs[j], x, one.back(), rows);
          a.weights_static = early;
          if (biases[j].defined()) a.bias = biases[j].raw(), a.bias_dtype = biases[j].dtype();
          gemv_4bit_cuda(a, 0);
          a.out = fused.back().raw();
          parts.push_back(a);
        }
        gemv_4bit_cuda_parts(parts, 0);
        for (size_t j = 0; j < qs.size(); j++) {
          std::vector<uint8_t> want = qtune_test::bytes_of(one[j]), got = qtune_test::bytes_of(fused[j]);
          EXPECT_EQ(got, want) << "part " << j << " of " << qs.size() << ", O " << c.Os[j] << " I " << I
                               << (c.dq ? " dq" : "") << " rows " << rows << (early ? " weights_static" : "");
        }
      }
    Tensor y0 = Tensor::empty({1, c.Os[0]}, DType::BF16, Device::CUDA);
    Gemv4Args a = gemv4_args(qs[0], x, y0, 1);
    Gemv4Args other_x = a;
    other_x.x = static_cast<const char*>(x.raw()) + 2 * I;
    EXPECT_THROW(gemv_4bit_cuda_parts({a, other_x}, 0), Error);
    Gemv4Args other_form = a;
    other_form.absmax.absmax = c.dq ? reinterpret_cast<const float*>(qs[0].packed.raw()) : nullptr;
    EXPECT_THROW(gemv_4bit_cuda_parts({a, other_form}, 0), Error);
    EXPECT_THROW(gemv_4bit_cuda_parts({a, a, a, a}, 0), Error);
    EXPECT_THROW(gemv_4bit_cuda_parts({}, 0), Error);
    // The fused norm's misuses: an add or a residual output without the norm, two rows, the residual
    // written over x, and weights of one launch that disagree on it.
    Gemv4Args norm = a;
    norm.norm_w = x.raw();
    Gemv4Args add_only = a, two_rows = norm, over_x = norm, other_norm = norm;
    add_only.x_add = x.raw();
    two_rows.rows = 2;
    over_x.res_out = const_cast<void*>(a.x);
    other_norm.norm_eps = 1e-3f;
    EXPECT_THROW(gemv_4bit_cuda(add_only, 0), Error);
    EXPECT_THROW(gemv_4bit_cuda(two_rows, 0), Error);
    EXPECT_THROW(gemv_4bit_cuda(over_x, 0), Error);
    EXPECT_THROW(gemv_4bit_cuda_parts({norm, other_norm}, 0), Error);
  }
}

// The GEMV starts while the kernel before it on the stream finishes (programmatic dependent launch) and
// must still see what that kernel wrote, and not overwrite what it reads. Chains y1 = W1 x, y2 = W2 y1 with
// x alternating between two vectors and y1 one buffer, all launched back to back with no synchronisation,
// on a stream and replayed as a CUDA graph: each y2 must be W2 · bf16(W1 x) of its own iteration (a read of
// the previous y1, or a y1 overwritten by the next iteration, is far off). The first GEMV takes the
// short-x orders, the second the long-x ones. Then weights written by a quantize kernel just before the
// GEMV (weights_static false) must be the ones it multiplies.
TEST(QuantCuda, Gemv4bitSeesWhatTheKernelBeforeWrote) {
  REQUIRE_GPU();
  std::mt19937_64 g(seed() + 5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto randv = [&](int64_t n, float scale) {
    std::vector<float> v((size_t)n);
    for (float& e : v) e = bf16_to_f32(f32_to_bf16(scale * nd(g)));
    return v;
  };
  auto matvec = [](const std::vector<double>& w, const std::vector<float>& x, int64_t O, int64_t I) {
    std::vector<float> y((size_t)O);  // bf16(w x), as the first GEMV writes it
    for (int64_t o = 0; o < O; o++) {
      double acc = 0;
      for (int64_t i = 0; i < I; i++) acc += w[(size_t)(o * I + i)] * x[(size_t)i];
      y[(size_t)o] = bf16_to_f32(f32_to_bf16((float)acc));
    }
    return y;
  };
  const int64_t I1 = 512, H = 4128, O2 = 300;
  const int iters = 6;
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  for (bool dq : {false, true})
    for (bool early : {false, true})
      for (bool graph : {false, true}) {
        Quant4Tensor q1 =
            quantize_4bit(Tensor::from_f32(randv(H * I1, 1.0f), {H, I1}), QuantType::NF4, 64, dq);
        Quant4Tensor q2 =
            quantize_4bit(Tensor::from_f32(randv(O2 * H, 1.0f), {O2, H}), QuantType::FP4, 64, dq);
        const std::vector<double> w1 = gemv4_weights(q1), w2 = gemv4_weights(q2);
        Quant4Tensor g1 = quant4_to(q1, Device::CUDA), g2 = quant4_to(q2, Device::CUDA);
        const std::vector<float> xv[2] = {randv(I1, 1.0f), randv(I1, 1.0f)};
        const std::vector<float> y1v[2] = {matvec(w1, xv[0], H, I1), matvec(w1, xv[1], H, I1)};
        Tensor x[2] = {Tensor::from_f32(xv[0], {1, I1}).to_dtype(DType::BF16).to(Device::CUDA),
                       Tensor::from_f32(xv[1], {1, I1}).to_dtype(DType::BF16).to(Device::CUDA)};
        Tensor y1 = Tensor::zeros({1, H}, DType::BF16, Device::CUDA);
        std::vector<Tensor> y2;
        for (int it = 0; it < iters; it++) y2.push_back(Tensor::zeros({1, O2}, DType::F32, Device::CUDA));
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        auto run = [&]() {
          for (int it = 0; it < iters; it++) {
            Gemv4Args a1 = gemv4_args(g1, x[it % 2], y1, 1), a2 = gemv4_args(g2, y1, y2[(size_t)it], 1);
            a1.weights_static = a2.weights_static = early;
            gemv_4bit_cuda(a1, s);
            gemv_4bit_cuda(a2, s);
          }
        };
        if (graph) {
          cudaGraph_t gr;
          cudaGraphExec_t ge;
          ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
          run();
          ASSERT_EQ(cudaStreamEndCapture(s, &gr), cudaSuccess);
          ASSERT_EQ(cudaGraphInstantiate(&ge, gr, 0), cudaSuccess);
          ASSERT_EQ(cudaGraphLaunch(ge, s), cudaSuccess);
          ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
          cudaGraphExecDestroy(ge);
          cudaGraphDestroy(gr);
        } else {
          run();
          ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
        }
        const std::string what = std::string(dq ? "dq" : "plain") + (early ? " weights_static" : "") +
                                 (graph ? " graph" : " stream");
        EXPECT_LE(gemv_rel_err(y1.to_f32_vector(), w1, xv[(iters - 1) % 2], 1, H, I1), 4e-3) << what << " y1";
        for (int it = 0; it < iters; it++)
          EXPECT_LE(gemv_rel_err(y2[(size_t)it].to_f32_vector(), w2, y1v[it % 2], 1, O2, H), 2e-3)
              << what << " y2, iteration " << it;
      }

  // Weights quantized on the stream just before each GEMV into the same buffers.
  const int64_t O = 2048, I = 256;
  const std::vector<float> wa = randv(O * I, 1.0f), wb = randv(O * I, 0.5f), xv = randv(I, 1.0f);
  const std::vector<double> da = gemv4_weights(
                                quantize_4bit(Tensor::from_f32(wa, {O, I}), QuantType::NF4, 64)),
                            db = gemv4_weights(
                                quantize_4bit(Tensor::from_f32(wb, {O, I}), QuantType::NF4, 64));
  Tensor w[2] = {Tensor::from_f32(wa, {O, I}).to(Device::CUDA),
                 Tensor::from_f32(wb, {O, I}).to(Device::CUDA)};
  Quant4Tensor q = quant4_to(quantize_4bit(Tensor::from_f32(wa, {O, I}), QuantType::NF4, 64), Device::CUDA);
  Tensor x = Tensor::from_f32(xv, {1, I}).to_dtype(DType::BF16).to(Device::CUDA);
  std::vector<Tensor> ys;
  for (int it = 0; it < iters; it++) ys.push_back(Tensor::zeros({1, O}, DType::F32, Device::CUDA));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (int it = 0; it < iters; it++) {
    quantize_4bit_cuda_raw(w[it % 2].raw(), DType::F32, O * I, 64, QuantType::NF4, q.packed.data<uint8_t>(),
                           q.absmax.data<float>(), s);
    gemv_4bit_cuda(gemv4_args(q, x, ys[(size_t)it], 1), s);
  }
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  for (int it = 0; it < iters; it++)
    EXPECT_LE(gemv_rel_err(ys[(size_t)it].to_f32_vector(), it % 2 ? db : da, xv, 1, O, I), 1e-5)
        << "weights quantized just before, iteration " << it;
  cudaStreamDestroy(s);
}
