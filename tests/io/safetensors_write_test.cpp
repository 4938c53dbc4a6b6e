// safetensors writer: round trip of every dtype, byte-for-byte equality with the Python reference writer
// (same tensors, same order), atomic replacement, refusals, and (when python3 with safetensors is
// installed) Python reading what we wrote.
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>

#include "io/safetensors.h"
#include "io_test_util.h"

using namespace qtune;
using namespace qtune_test;

namespace {

Tensor random_tensor(const Shape& shape, DType dt, std::mt19937& rng) {
  Tensor t = Tensor::empty(shape, dt);
  unsigned char* p = (unsigned char*)t.raw();
  for (size_t i = 0; i < t.nbytes(); i++) p[i] = (unsigned char)(rng() & 0xff);
  if (dt == DType::BOOL)
    for (size_t i = 0; i < t.nbytes(); i++) p[i] &= 1;
  return t;
}

TEST(SafetensorsWrite, RoundTripEveryDtype) {
  TempDir dir;
  std::mt19937 rng(1234);
  std::vector<std::pair<std::string, Tensor>> ts = {
      {"model.layers.0.w", random_tensor({3, 5}, DType::BF16, rng)},
      {"a_f32", random_tensor({7}, DType::F32, rng)},
      {"half", random_tensor({2, 2, 3}, DType::F16, rng)},
      {"scalar_f64", random_tensor({}, DType::F64, rng)},
      {"ids", random_tensor({4}, DType::I64, rng)},
      {"i32", random_tensor({3}, DType::I32, rng)},
      {"i8", random_tensor({5}, DType::I8, rng)},
      {"u8", random_tensor({9}, DType::U8, rng)},
      {"flags", random_tensor({6}, DType::BOOL, rng)},
      {"nothing", Tensor::empty({0, 16}, DType::F32)},
  };
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "ünïcode ok"}};
  std::string path = dir.file("rt.safetensors");
  write_safetensors(path, ts, meta);

  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->metadata(), meta);
  EXPECT_EQ(f->header_size() % 8, 0u);
  ASSERT_EQ(f->tensors().size(), ts.size());
  for (size_t i = 0; i < ts.size(); i++) {
    const std::string& name = ts[i].first;
    const Tensor& want = ts[i].second;
    EXPECT_EQ(f->tensors()[i].name, name);  // data laid out in the order given
    Tensor got = f->get(name);
    EXPECT_EQ(got.dtype(), want.dtype()) << name;
    EXPECT_EQ(got.shape(), want.shape()) << name;
    ASSERT_EQ(got.nbytes(), want.nbytes()) << name;
    EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << name;
  }
  // Header text: compact JSON, metadata first, padded with spaces.
  std::string bytes = read_bytes(path);
  std::string header = bytes.substr(8, f->header_size());
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\",\"note\":", 0), 0u) << header;
  EXPECT_NE(header.find("\"model.layers.0.w\":{\"dtype\":\"BF16\",\"shape\":[3,5],\"data_offsets\":[0,30]}"),
            std::string::npos)
      << header;
  // Only the destination remains in the folder (no temp file left behind).
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path())) n += e.is_regular_file();
  EXPECT_EQ(n, 1);
}

// Same tensors, same order, same metadata as the Python library's file → identical bytes.
TEST(SafetensorsWrite, BytesMatchPythonWriter) {
  std::string ref = QTUNE_FIXTURES "/io/py_mixed.safetensors";
  auto f = SafetensorsFile::open(ref);
  std::vector<std::pair<std::string, Tensor>> ts;
  for (const TensorInfo& t : f->tensors()) ts.push_back({t.name, f->get(t.name).clone()});
  TempDir dir;
  write_safetensors(dir.file("ours.safetensors"), ts, f->metadata());
  std::string ours = read_bytes(dir.file("ours.safetensors")), theirs = read_bytes(ref);
  EXPECT_EQ(ours.size(), theirs.size());
  EXPECT_TRUE(ours == theirs) << "ours:   " << ours.substr(0, 8 + f->header_size())
                              << "\ntheirs: " << theirs.substr(0, 8 + f->header_size());
}

TEST(SafetensorsWrite, ReplacesExistingFileAtomically) {
  TempDir dir;
  std::string path = dir.file("w.safetensors");
  write_safetensors(path, {{"x", Tensor::from_f32({1, 2}, {2})}});
  auto old_file = SafetensorsFile::open(path);  // a reader holding the old mapping
  Tensor old_x = old_file->get("x");
  write_safetensors(path, {{"y", Tensor::from_f32({5, 6, 7}, {3})}});
  EXPECT_EQ(old_x.to_f32_vector(), (std::vector<float>{1, 2}));  // old mapping still intact (rename)
  auto f = SafetensorsFile::open(path);
  EXPECT_FALSE(f->has("x"));
  EXPECT_EQ(f->get("y").to_f32_vector(), (std::vector<float>{5, 6, 7}));
}

TEST(SafetensorsWrite, Refusals) {
  TempDir dir;
  std::string path = dir.file("bad.safetensors");
  Tensor x = Tensor::from_f32({1}, {1});
  std::string msg = error_of([&] { write_safetensors(path, {{"x", x}, {"x", x}}); }, ErrorKind::Usage);
  EXPECT_HAS(msg, "tensor 'x' given twice");
  EXPECT_HAS(msg, path);
  msg = error_of([&] { write_safetensors(path, {{"__metadata__", x}}); }, ErrorKind::Usage);
  EXPECT_HAS(msg, "invalid tensor name '__metadata__'");
  msg = error_of([&] { write_safetensors(path, {{"u", Tensor()}}); }, ErrorKind::Usage);
  EXPECT_HAS(msg, "tensor 'u' is undefined");
  msg = error_of(
      [&] {
        write_safetensors(path, {{"q", Tensor::empty({4}, DType::Q4)}});
      },
      ErrorKind::Unsupported);
  EXPECT_HAS(msg, "tensor 'q' is packed 4-bit");
  msg = error_of([&] { write_safetensors(path, {{"bad\xff", x}}); }, ErrorKind::Usage);
  EXPECT_HAS(msg, "cannot write header");
  EXPECT_FALSE(std::filesystem::exists(path));
  std::string nodir = dir.file("missing/sub/out.safetensors");
  msg = error_of([&] { write_safetensors(nodir, {{"x", x}}); }, ErrorKind::Io);
  EXPECT_HAS(msg, nodir);
}

// Python's safetensors reads our file (skipped when python3 or the package is absent).
TEST(SafetensorsWrite, PythonReadsOurFile) {
  if (std::system("python3 -c 'import safetensors, numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 with safetensors and numpy not available";
  TempDir dir;
  std::string path = dir.file("ours.safetensors");
  std::vector<float> v = {0.5f, -1.25f, 3.0f, 8.0f, -0.0625f, 100.0f};
  write_safetensors(path,
                    {{"f", Tensor::from_f32(v, {2, 3})},
                     {"h", Tensor::from_f32(v, {6}).to_dtype(DType::F16)},
                     {"i", Tensor::from_i32({7, -8, 9}, {3})},
                     {"z", Tensor::empty({0}, DType::F32)}},
                    {{"format", "pt"}});
  std::string out = dir.file("py.txt");
  std::string cmd =
      "python3 -c \"from safetensors.numpy import load_file; from safetensors import safe_open; "
      "d = load_file('" +
      path + "'); m = safe_open('" + path +
      "', 'np').metadata(); "
      "print(sorted(d), d['f'].shape, d['f'].sum(), d['h'].dtype, d['h'].sum(), "
      "d['i'].tolist(), d['z'].shape, m)\" > " +
      out + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_bytes(out);
  EXPECT_EQ(read_bytes(out),
            "['f', 'h', 'i', 'z'] (2, 3) 110.1875 float16 110.2 [7, -8, 9] (0,) {'format': 'pt'}\n");
}

}  // namespace
