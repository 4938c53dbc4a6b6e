// The transformers/bitsandbytes 4-bit entry set: reads what bitsandbytes wrote (format_*.safetensors),
// dequantizes it bit-exactly, writes it back byte for byte, and rejects broken entry sets with clear errors.
#include "quant/bnb_format.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "core/error.h"
#include "fixture.h"

using namespace qtune;
using qtune_test::Fixture;
using qtune_test::load_fixture;
using qtune_test::same_bits;

namespace {
const std::string kPrefix = "model.w.weight";

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TensorMap weight_entries(const Fixture& fx) {
  TensorMap m;
  for (const auto& kv : fx.tensors)
    if (kv.first.rfind(kPrefix, 0) == 0) m[kv.first] = kv.second;
  return m;
}

Tensor json_blob(const std::string& s) {
  Tensor t = Tensor::empty({(int64_t)s.size()}, DType::U8);
  std::memcpy(t.raw(), s.data(), s.size());
  return t;
}

std::string state_key(const TensorMap& m) {
  for (const auto& kv : m)
    if (kv.first.find(".quant_state.") != std::string::npos) return kv.first;
  return "";
}
}  // namespace

TEST(BnbFormat, ReadDequantizeWriteBack) {
  int count = 0;
  for (int i = 0;; i++) {
    char name[32];
    std::snprintf(name, sizeof(name), "format_%02d.safetensors", i);
    if (!std::ifstream(qtune_test::quant_fixture_path(name))) break;
    SCOPED_TRACE(name);
    count++;
    Fixture fx = load_fixture(name);
    TensorMap in = weight_entries(fx);
    ASSERT_TRUE(bnb_has_4bit(in, kPrefix));
    EXPECT_FALSE(bnb_has_4bit(in, "model.other.weight"));
    Quant4Tensor q = bnb_read_4bit(in, kPrefix);
    EXPECT_TRUE(same_bits(dequantize_4bit(q), fx.at("expected_dequant")));
    EXPECT_EQ(q.shape, fx.at("expected_dequant").shape());
    auto out = bnb_4bit_entries(q, kPrefix);
    ASSERT_EQ(out.size(), in.size());
    EXPECT_EQ(out.front().first, kPrefix);
    for (const auto& kv : out) {
      SCOPED_TRACE(kv.first);
      ASSERT_TRUE(in.count(kv.first));
      EXPECT_TRUE(same_bits(kv.second, in.at(kv.first)));
      EXPECT_EQ(kv.second.shape(), in.at(kv.first).shape());
    }
    // And a fresh quantization of the same values serializes to what bitsandbytes wrote.
    TensorMap again;
    bnb_write_4bit(quantize_4bit(fx.at("expected_dequant"), q.quant_type, q.blocksize, q.nested), "x",
                   &again);
    EXPECT_TRUE(bnb_has_4bit(again, "x"));
  }
  EXPECT_GE(count, 3);
}

// bnb_4bit_quant_storage other than uint8 (bfloat16 for FSDP-QLoRA) saves the same bytes as that dtype,
// [bytes / itemsize, 1]: they read as the U8 packing; a wrong byte count names the storage dtype.
TEST(BnbFormat, PackedBytesInAnotherStorageDtype) {
  Fixture fx = load_fixture("format_00.safetensors");  // [64, 96]: 3072 packed bytes
  const TensorMap good = weight_entries(fx);
  const Tensor& packed = good.at(kPrefix);
  const Quant4Tensor want = bnb_read_4bit(good, kPrefix);
  for (DType storage : {DType::BF16, DType::F16, DType::F32}) {
    SCOPED_TRACE(dtype_name(storage));
    const int64_t item = (int64_t)dtype_nbytes(storage, 1);
    TensorMap m = good;
    Tensor as = Tensor::empty({packed.numel() / item, 1}, storage);
    std::memcpy(as.raw(), packed.raw(), packed.nbytes());
    m[kPrefix] = as;
    Quant4Tensor q = bnb_read_4bit(m, kPrefix);
    EXPECT_EQ(q.packed.dtype(), DType::U8);
    EXPECT_EQ(q.packed.shape(), packed.shape());
    EXPECT_TRUE(same_bits(dequantize_4bit(q), dequantize_4bit(want)));
    m[kPrefix] = Tensor::zeros({packed.numel() / item - 1, 1}, storage);
    EXPECT_NE(error_of([&] { bnb_read_4bit(m, kPrefix); })
                  .find(std::string("bnb_4bit_quant_storage ") + dtype_name(storage) +
                        "), expected 3072 bytes for shape [64, 96]"),
              std::string::npos)
        << error_of([&] { bnb_read_4bit(m, kPrefix); });
  }
}

TEST(BnbFormat, PythonFloatRepr) {
  EXPECT_EQ(python_float_repr(0.127838134765625), "0.127838134765625");
  EXPECT_EQ(python_float_repr(1e-05), "1e-05");
  EXPECT_EQ(python_float_repr(1.5e-05), "1.5e-05");
  EXPECT_EQ(python_float_repr(0.0001), "0.0001");
  EXPECT_EQ(python_float_repr(2.0), "2.0");
  EXPECT_EQ(python_float_repr(-0.5), "-0.5");
  EXPECT_EQ(python_float_repr(0.0), "0.0");
  EXPECT_EQ(python_float_repr(123456.75), "123456.75");
  EXPECT_EQ(python_float_repr(1e16), "1e+16");
  EXPECT_EQ(python_float_repr(1234567890123456.0), "1234567890123456.0");
  EXPECT_EQ(python_float_repr((double)0.1f), "0.10000000149011612");
}

TEST(BnbFormat, Errors) {
  Fixture fx = load_fixture("format_00.safetensors");  // nested nf4
  const TensorMap good = weight_entries(fx);
  const std::string key = state_key(good);
  ASSERT_FALSE(key.empty());
  const std::string js(static_cast<const char*>(good.at(key).raw()), (size_t)good.at(key).numel());

  TensorMap m = good;
  m.erase(kPrefix + ".absmax");
  EXPECT_NE(error_of([&] { bnb_read_4bit(m, kPrefix); }).find("missing model.w.weight.absmax"),
            std::string::npos);

  m = good;
  m.erase(kPrefix + ".nested_quant_map");
  EXPECT_NE(error_of([&] { bnb_read_4bit(m, kPrefix); }).find("missing model.w.weight.nested_quant_map"),
            std::string::npos);

  m = good;
  m.erase(key);
  EXPECT_NE(error_of([&] {
              bnb_read_4bit(m, kPrefix);
            }).find("missing model.w.weight.quant_state.bitsandbytes__nf4"),
            std::string::npos);

  m = good;
  m[kPrefix] = Tensor::zeros({100, 1}, DType::U8);
  EXPECT_NE(error_of([&] { bnb_read_4bit(m, kPrefix); }).find("expected 3072 U8 bytes for shape [64, 96]"),
            std::string::npos);

  m = good;
  m.erase(key);
  m[kPrefix + ".quant_state.bitsandbytes__int4"] = good.at(key);
  EXPECT_NE(error_of([&] { bnb_read_4bit(m, kPrefix); }).find("unknown 4-bit quant type 'int4'"),
            std::string::npos);

  auto with_json = [&](const std::string& text) {
    TensorMap t = good;
    t[key] = json_blob(text);
    return error_of([&] { bnb_read_4bit(t, kPrefix); });
  };
  auto replace = [&](std::string s, const std::string& from, const std::string& to) {
    s.replace(s.find(from), from.size(), to);
    return s;
  };
  EXPECT_NE(with_json(replace(js, "\"blocksize\": 64", "\"blocksize\": 48")).find("bad block size 48"),
            std::string::npos);
  EXPECT_NE(
      with_json(replace(js, "\"quant_type\": \"nf4\"", "\"quant_type\": \"fp4\"")).find("does not match"),
      std::string::npos);
  EXPECT_NE(with_json(replace(js, "\"quant_type\": \"nf4\"", "\"quant_type\": \"af4\""))
                .find("unknown 4-bit quant type 'af4'"),
            std::string::npos);
  EXPECT_NE(
      with_json(replace(js, "\"dtype\": \"bfloat16\"", "\"dtype\": \"int8\"")).find("unsupported \"dtype\""),
      std::string::npos);
  EXPECT_NE(
      with_json(replace(js, "\"shape\": [64, 96]", "\"shape\": [64, 95]")).find("expected 3040 U8 bytes"),
      std::string::npos);
  EXPECT_NE(with_json("{\"quant_type\": \"nf4\"").find("malformed JSON"), std::string::npos);
  EXPECT_NE(with_json(replace(js, "\"blocksize\": 64, ", "")).find("missing \"blocksize\""),
            std::string::npos);

  m = good;
  m[kPrefix + ".quant_map"] = Tensor::zeros({16}, DType::F32);
  EXPECT_NE(error_of([&] { bnb_read_4bit(m, kPrefix); }).find("is not the nf4 code book"), std::string::npos);
}
