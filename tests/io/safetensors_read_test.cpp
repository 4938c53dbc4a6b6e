// safetensors reader: every malformed-file rule (each message must name the file, the tensor and the
// defect), and good files: one written by the Python reference library (all dtypes, bf16, zero-size,
// scalar, metadata), zero-copy borrowing, lifetime, misaligned data, permissive whitespace.
#include <cstring>
#include <random>

#include "io/safetensors.h"
#include "io_test_util.h"

using namespace qtune;
using namespace qtune_test;

namespace {

const std::string kF32x2 = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

struct BadCase {
  const char* label;
  std::string bytes;
  std::vector<std::string> expect;  // substrings of the message besides the file name
};

std::vector<BadCase> bad_cases() {
  const std::string d8(8, '\0');
  return {
      {"too_short", std::string(5, '\x01'), {"5 bytes", "shorter than the 8-byte header length"}},
      {"header_past_end", st_bytes("{}", "", 64), {"header length 64", "runs past the end of the file"}},
      {"header_absurd", st_bytes("{}", "", 200000000ull), {"header length 200000000", "absurd"}},
      {"not_json", st_bytes(R"({"a": {"dtype": "F32",)", ""), {"not valid JSON", "header byte"}},
      {"not_object", st_bytes("[1, 2]", ""), {"must be a JSON object", "got array"}},
      {"entry_not_object", st_bytes(R"({"w": [0, 8]})", d8), {"tensor 'w'", "entry must be an object"}},
      {"missing_dtype",
       st_bytes(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", d8),
       {"tensor 'w'", "missing field 'dtype'"}},
      {"missing_shape",
       st_bytes(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", d8),
       {"tensor 'w'", "missing field 'shape'"}},
      {"missing_offsets",
       st_bytes(R"({"w":{"dtype":"F32","shape":[2]}})", d8),
       {"tensor 'w'", "missing field 'data_offsets'"}},
      {"dtype_not_string",
       st_bytes(R"({"w":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", d8),
       {"tensor 'w'", "dtype must be a string", "integer (32)"}},
      {"unknown_dtype",
       st_bytes(R"({"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", d8),
       {"tensor 'w'", "unknown dtype 'F33'", "valid: F32, F16, BF16"}},
      {"unsupported_dtype",
       st_bytes(R"({"w":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", d8),
       {"tensor 'w'", "'F8_E4M3' is a safetensors dtype qtune cannot read"}},
      {"shape_not_array",
       st_bytes(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", d8),
       {"tensor 'w'", "shape must be an array"}},
      {"negative_dim",
       st_bytes(R"({"w":{"dtype":"F32","shape":[1,-2],"data_offsets":[0,8]}})", d8),
       {"tensor 'w'", "shape[1]", "integer (-2)", "non-negative integer"}},
      {"fractional_dim",
       st_bytes(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", d8),
       {"tensor 'w'", "shape[0]", "2.5", "non-negative integer"}},
      {"string_dim",
       st_bytes(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", d8),
       {"tensor 'w'", "shape[0] is string"}},
      {"huge_shape",
       st_bytes(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", d8),
       {"tensor 'w'", "too many elements"}},
      {"offsets_one_value",
       st_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", d8),
       {"tensor 'w'", "data_offsets must be two non-negative integers", "[8]"}},
      {"offsets_negative",
       st_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", d8),
       {"tensor 'w'", "data_offsets must be two non-negative integers"}},
      {"offsets_decreasing",
       st_bytes(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", d8),
       {"tensor 'w'", "[8,0]", "end before they begin"}},
      {"size_mismatch",
       st_bytes(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", std::string(20, '\0')),
       {"tensor 'w'", "shape [2, 3] of F32 needs 24 bytes", "cover 20"}},
      {"past_data",
       st_bytes(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", d8),
       {"tensor 'w'", "run past the end of the data section (8 bytes)"}},
      {"overlap",
       st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                d8),
       {"tensor 'b'", "overlaps tensor 'a'", "[0, 8)", "[4, 8)"}},
      {"hole",
       st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                std::string(12, '\0')),
       {"bytes [4, 8) belong to no tensor", "hole before tensor 'b'", "contiguous"}},
      {"leading_hole",
       st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8),
       {"bytes [0, 4) belong to no tensor", "tensor 'a'"}},
      {"trailing_bytes",
       st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", d8),
       {"data section has 8 bytes but the tensors cover 4", "4 trailing bytes"}},
      {"duplicate",
       st_bytes("{\"w\":" + kF32x2 + ",\"w\":" + kF32x2 + "}", d8),
       {"tensor 'w' appears more than once"}},
      {"metadata_int",
       st_bytes("{\"__metadata__\":{\"format\":\"pt\",\"step\":3},\"w\":" + kF32x2 + "}", d8),
       {"__metadata__ must map strings to strings", "key 'step'", "integer (3)"}},
      {"metadata_array",
       st_bytes("{\"__metadata__\":[\"pt\"],\"w\":" + kF32x2 + "}", d8),
       {"__metadata__ must be an object", "got array"}},
      {"not_utf8",
       st_bytes("{\"w\xff\":" + kF32x2 + "}", d8),
       {"not valid UTF-8", "0xff", "header offset 3"}},
      {"nul_padding", st_bytes("{\"w\":" + kF32x2 + "}" + std::string(3, '\0'), d8), {"not valid JSON"}},
  };
}

class BadSafetensors : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadSafetensors, ErrorNamesFileAndDefect) {
  const BadCase& c = GetParam();
  TempDir dir;
  std::string path = dir.file(std::string(c.label) + ".safetensors");
  write_bytes(path, c.bytes);
  std::string msg = error_of([&] { SafetensorsFile::open(path); }, ErrorKind::Format);
  EXPECT_HAS(msg, path);
  for (const std::string& s : c.expect) EXPECT_HAS(msg, s);
}

INSTANTIATE_TEST_SUITE_P(Io, BadSafetensors, ::testing::ValuesIn(bad_cases()),
                         [](const ::testing::TestParamInfo<BadCase>& i) {
                           return std::string(i.param.label);
                         });

TEST(SafetensorsRead, MissingFileIsIoError) {
  TempDir dir;
  std::string msg = error_of([&] { SafetensorsFile::open(dir.file("nope.safetensors")); }, ErrorKind::Io);
  EXPECT_HAS(msg, "nope.safetensors");
  EXPECT_HAS(msg, "No such file");
}

// The Python reference library wrote this (tools/make_io_fixtures.py): v[i] = (i % 7) * 0.25 - 0.75.
float mixed_value(int i) {
  return (float)((i % 7) * 0.25 - 0.75);
}

TEST(SafetensorsRead, PythonWrittenFileAllDtypes) {
  auto f = SafetensorsFile::open(QTUNE_FIXTURES "/io/py_mixed.safetensors");
  EXPECT_EQ(f->tensors().size(), 10u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->header_size() % 8, 0u);  // the reference writer pads with spaces

  Tensor a = f->get("w_f32");
  EXPECT_EQ(a.dtype(), DType::F32);
  EXPECT_EQ(a.shape(), (Shape{2, 3}));
  Tensor b = f->get("w_bf16");
  EXPECT_EQ(b.dtype(), DType::BF16);
  EXPECT_EQ(b.shape(), (Shape{3, 4}));
  Tensor h = f->get("w_f16");
  EXPECT_EQ(h.dtype(), DType::F16);
  std::vector<float> av = a.to_f32_vector(), bv = b.to_f32_vector(), hv = h.to_f32_vector();
  for (int i = 0; i < 6; i++) EXPECT_EQ(av[i], mixed_value(i)) << i;
  for (int i = 0; i < 12; i++) EXPECT_EQ(bv[i], mixed_value(i)) << i;
  for (int i = 0; i < 5; i++) EXPECT_EQ(hv[i], mixed_value(i)) << i;
  // bf16 raw bits: -0.75 is 0xbf40.
  EXPECT_EQ(b.data<uint16_t>()[0], 0xbf40);

  Tensor s = f->get("w_f64");
  EXPECT_EQ(s.dtype(), DType::F64);
  EXPECT_EQ(s.ndim(), 0);
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.data<double>()[0], -0.75);

  Tensor i64 = f->get("ids_i64");
  EXPECT_EQ(i64.dtype(), DType::I64);
  for (int i = 0; i < 4; i++) EXPECT_EQ(i64.data<int64_t>()[i], i - 2);
  Tensor i32 = f->get("ids_i32");
  EXPECT_EQ(i32.shape(), (Shape{3, 2}));
  for (int i = 0; i < 6; i++) EXPECT_EQ(i32.data<int32_t>()[i], i);
  Tensor i8 = f->get("q_i8");
  EXPECT_EQ(i8.dtype(), DType::I8);
  EXPECT_EQ(i8.data<int8_t>()[0], -128);
  EXPECT_EQ(i8.data<int8_t>()[4], 127);
  Tensor u8 = f->get("q_u8");
  EXPECT_EQ(u8.data<uint8_t>()[3], 255);
  Tensor m = f->get("mask_bool");
  EXPECT_EQ(m.dtype(), DType::BOOL);
  EXPECT_EQ(m.data<uint8_t>()[0], 1);
  EXPECT_EQ(m.data<uint8_t>()[1], 0);

  Tensor e = f->get("empty_f32");
  EXPECT_EQ(e.shape(), (Shape{0, 4}));
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(e.nbytes(), 0u);

  // tensors() is in data order: each begins where the previous ended, the last ends at the file end.
  size_t expect = 0;
  for (const TensorInfo& t : f->tensors()) {
    EXPECT_EQ(t.begin, expect) << t.name;
    expect = t.end;
  }
  EXPECT_EQ(8 + f->header_size() + expect, f->file_size());

  std::string msg = error_of([&] { f->get("w_f99"); }, ErrorKind::Format);
  EXPECT_HAS(msg, "no tensor named 'w_f99'");
  EXPECT_HAS(msg, "py_mixed.safetensors");
}

TEST(SafetensorsRead, ZeroCopyAndKeepsMappingAlive) {
  TempDir dir;
  float vals[3] = {1.5f, -2.0f, 3.25f};
  std::string data((const char*)vals, sizeof vals);
  std::string hdr = R"({"v":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  hdr.append((8 - hdr.size() % 8) % 8, ' ');
  write_bytes(dir.file("v.safetensors"), st_bytes(hdr, data));
  auto f = SafetensorsFile::open(dir.file("v.safetensors"));
  Tensor t1 = f->get("v"), t2 = f->get("v");
  EXPECT_EQ(t1.raw(), t2.raw());  // both borrow the mapping; nothing copied
  std::weak_ptr<SafetensorsFile> weak = f;
  f.reset();
  EXPECT_FALSE(weak.expired());  // the tensors hold the file (and its mapping)
  EXPECT_EQ(t1.data<float>()[2], 3.25f);
  t1 = Tensor();
  t2 = Tensor();
  EXPECT_TRUE(weak.expired());  // last tensor gone: unmapped
}

TEST(SafetensorsRead, MisalignedDataIsCopiedAligned) {
  TempDir dir;
  float vals[2] = {0.5f, -7.0f};
  std::string hdr = R"({"v":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  if (hdr.size() % 4 == 0) hdr += " ";  // data starts at 8 + N: make it misaligned for f32
  write_bytes(dir.file("m.safetensors"), st_bytes(hdr, std::string((const char*)vals, 8)));
  auto f = SafetensorsFile::open(dir.file("m.safetensors"));
  Tensor t = f->get("v");
  EXPECT_EQ((uintptr_t)t.raw() % 4, 0u);
  EXPECT_EQ(t.data<float>()[0], 0.5f);
  EXPECT_EQ(t.data<float>()[1], -7.0f);
}

TEST(SafetensorsRead, WhitespaceEmptyAndZeroSizeTensors) {
  TempDir dir;
  // Leading/trailing JSON whitespace is legal (the reference library pads with spaces).
  write_bytes(dir.file("ws.safetensors"), st_bytes(" \n{\"w\":" + kF32x2 + "}\t  ", std::string(8, '\0')));
  EXPECT_EQ(SafetensorsFile::open(dir.file("ws.safetensors"))->tensors().size(), 1u);
  // A file with no tensors at all.
  write_bytes(dir.file("empty.safetensors"), st_bytes("{}      ", ""));
  auto e = SafetensorsFile::open(dir.file("empty.safetensors"));
  EXPECT_TRUE(e->tensors().empty());
  EXPECT_FALSE(e->has("w"));
  // Zero-size tensors may sit at any boundary, including the end of the data and between others.
  write_bytes(dir.file("z.safetensors"),
              st_bytes(R"({"end":{"dtype":"BF16","shape":[0],"data_offsets":[8,8]},)"
                       R"("mid":{"dtype":"F32","shape":[3,0],"data_offsets":[4,4]},)"
                       R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                       R"("__metadata__":null})",
                       std::string(8, '\0')));
  auto z = SafetensorsFile::open(dir.file("z.safetensors"));
  ASSERT_EQ(z->tensors().size(), 4u);
  EXPECT_EQ(z->get("mid").shape(), (Shape{3, 0}));
  EXPECT_EQ(z->get("end").numel(), 0);
  EXPECT_TRUE(z->metadata().empty());
}

// Random byte damage to a valid file: open() either succeeds or throws qtune::Error (never another
// exception type, never a crash), and every tensor it accepts lies inside the file.
TEST(SafetensorsRead, DamagedFilesFailCleanly) {
  std::string good = read_bytes(QTUNE_FIXTURES "/io/py_mixed.safetensors");
  unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  TempDir dir;
  std::string path = dir.file("damaged.safetensors");
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < 200; iter++) {
    std::string b = good;
    int edits = 1 + (int)(rng() % 3);
    for (int e = 0; e < edits; e++) {
      size_t at = rng() % std::min<size_t>(b.size(), 8 + 400);  // mostly the length and the header
      switch (rng() % 3) {
        case 0:
          b[at] = (char)(rng() & 0xff);
          break;
        case 1:
          b[at] = "{}[],:\"0-9e. "[rng() % 14];
          break;
        default:
          b.erase(at, 1 + rng() % 4);
          break;
      }
    }
    write_bytes(path, b);
    try {
      auto f = SafetensorsFile::open(path);
      for (const TensorInfo& t : f->tensors()) {
        ASSERT_LE(8 + f->header_size() + t.end, f->file_size());
        f->get(t.name);
      }
      accepted++;
    } catch (const Error&) {
      rejected++;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_EQ(accepted + rejected, 200);
}

}  // namespace
