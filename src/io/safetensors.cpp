// safetensors reader: mmaps the file read-only, validates the header with the rules of the reference
// (Rust) library, and hands out zero-copy tensors that keep the mapping alive.
//
// Rules (as huggingface/safetensors enforces them): the 8-byte little-endian header length N is at most
// 100,000,000 and 8 + N fits in the file; the header is UTF-8 JSON, an object whose keys are tensor names
// plus an optional "__metadata__" string→string map; each tensor has dtype, shape and data_offsets
// [begin, end] with end - begin = bytes of shape × dtype; sorted by offset the tensors tile the data
// section exactly: no gap, no overlap, no trailing bytes. On top of that, a name may appear only once.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <set>

#include "io/json_util.h"

namespace qtune {

using json = nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100000000;  // the reference library's MAX_HEADER_SIZE

const char* kSupportedDtypes = "F32, F16, BF16, F64, I8, U8, I32, I64, BOOL";
// Names the format defines that qtune does not read (yet).
const char* const kOtherSafetensorsDtypes[] = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4",  "F6_E2M3", "F6_E3M2",
                                               "I16",     "U16",     "U32",     "U64", "C64"};

std::string squote(const std::string& s) {
  return "'" + s + "'";
}

// A header integer: non-negative and integral, as JSON numbers (not floats, not strings).
bool as_size(const json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) {
    if (v.is_number_integer() && v.get<int64_t>() >= 0) {
      *out = (uint64_t)v.get<int64_t>();
      return true;
    }
    return false;
  }
  *out = v.get<uint64_t>();
  return true;
}

}  // namespace

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, map_size_);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->self_ = f;
  f->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_error(ErrorKind::Io, path, ": cannot open safetensors file: ", std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw_error(ErrorKind::Io, path, ": cannot stat: ", std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw_error(ErrorKind::Io, path, ": not a regular file");
  }
  size_t size = (size_t)st.st_size;
  if (size < 8) {
    ::close(fd);
    throw_error(ErrorKind::Format, path, ": file is ", size,
                " bytes, shorter than the 8-byte header length that starts a safetensors file");
  }
  void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  ::close(fd);
  if (m == MAP_FAILED) throw_error(ErrorKind::Io, path, ": mmap failed: ", std::strerror(e));
  f->map_ = m;
  f->map_size_ = size;
  f->parse_header();
  return f;
}

void SafetensorsFile::parse_header() {
  const unsigned char* base = (const unsigned char*)map_;
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | base[i];  // little-endian u64
  if (n > kMaxHeaderBytes)
    throw_error(ErrorKind::Format, path_, ": header length ", n, " is absurd (limit ", kMaxHeaderBytes,
                " bytes); not a safetensors file?");
  if (n > map_size_ - 8)
    throw_error(ErrorKind::Format, path_, ": header length ", n, " runs past the end of the file (",
                map_size_, " bytes, so at most ", map_size_ - 8, " header bytes)");
  header_size_ = (size_t)n;
  const char* hdr = (const char*)base + 8;
  data_ = hdr + n;
  const size_t data_size = map_size_ - 8 - (size_t)n;

  size_t bad = 0;
  if (!is_valid_utf8(hdr, (size_t)n, &bad))
    throw_error(ErrorKind::Format, path_, ": header is not valid UTF-8 (bad byte 0x", std::hex,
                (unsigned)(unsigned char)hdr[bad], std::dec, " at header offset ", bad, ")");

  // JSON never holds a raw NUL; nlohmann would stop at one and ignore the rest, the reference rejects it.
  const void* nul = std::memchr(hdr, 0, (size_t)n);
  if (nul)
    throw_error(ErrorKind::Format, path_, ": header is not valid JSON: NUL byte at header offset ",
                (const char*)nul - hdr);

  // Parse, noting top-level keys seen twice (nlohmann would silently keep the last one).
  std::set<std::string> seen;
  std::string duplicate;
  auto on_event = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key && depth == 1) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  json h;
  try {
    h = json::parse(hdr, hdr + n, on_event);
  } catch (const json::parse_error& e) {
    throw_error(ErrorKind::Format, path_, ": header is not valid JSON (error at header byte ", e.byte,
                "): ", e.what());
  }
  if (!h.is_object())
    throw_error(ErrorKind::Format, path_, ": header must be a JSON object, got ", json_type_name(h));
  if (!duplicate.empty())
    throw_error(ErrorKind::Format, path_, ": tensor ", squote(duplicate),
                " appears more than once in the header");

  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (v.is_null()) continue;
      if (!v.is_object())
        throw_error(ErrorKind::Format, path_,
                    ": __metadata__ must be an object mapping strings to strings, got ", json_type_name(v));
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw_error(ErrorKind::Format, path_, ": __metadata__ must map strings to strings; key ",
                      squote(m.key()), " has ", json_type_name(m.value()));
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = path_ + ": tensor " + squote(name);
    if (!v.is_object())
      throw_error(ErrorKind::Format, where, ": entry must be an object, got ", json_type_name(v));
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!v.contains(field)) throw_error(ErrorKind::Format, where, ": missing field '", field, "'");

    TensorInfo t;
    t.name = name;
    const json& dt = v["dtype"];
    if (!dt.is_string())
      throw_error(ErrorKind::Format, where, ": dtype must be a string, got ", json_type_name(dt));
    const std::string dname = dt.get<std::string>();
    if (!dtype_from_name(dname, &t.dtype)) {
      for (const char* other : kOtherSafetensorsDtypes)
        if (dname == other)
          throw_error(ErrorKind::Format, where, ": dtype ", squote(dname),
                      " is a safetensors dtype qtune cannot read (supported: ", kSupportedDtypes, ")");
      throw_error(ErrorKind::Format, where, ": unknown dtype ", squote(dname), " (valid: ", kSupportedDtypes,
                  ")");
    }

    const json& sh = v["shape"];
    if (!sh.is_array())
      throw_error(ErrorKind::Format, where, ": shape must be an array of integers, got ", json_type_name(sh));
    uint64_t numel = 1;
    bool overflow = false;
    for (size_t i = 0; i < sh.size(); i++) {
      uint64_t d;
      if (!as_size(sh[i], &d))
        throw_error(ErrorKind::Format, where, ": shape[", i, "] is ", json_type_name(sh[i]),
                    ", expected a non-negative integer (shape ", sh.dump(), ")");
      if (d > (uint64_t)INT64_MAX) overflow = true;
      t.shape.push_back((int64_t)d);
      if (__builtin_mul_overflow(numel, d, &numel)) overflow = true;
    }
    const uint64_t bits = (uint64_t)dtype_bits(t.dtype);
    uint64_t nbits = 0;
    if (overflow || numel > (uint64_t)INT64_MAX || __builtin_mul_overflow(numel, bits, &nbits))
      throw_error(ErrorKind::Format, where, ": shape ", sh.dump(), " has too many elements");

    const json& off = v["data_offsets"];
    uint64_t b = 0, e = 0;
    if (!off.is_array() || off.size() != 2 || !as_size(off[0], &b) || !as_size(off[1], &e))
      throw_error(ErrorKind::Format, where,
                  ": data_offsets must be two non-negative integers [begin, end], got ", off.dump());
    if (e < b) throw_error(ErrorKind::Format, where, ": data_offsets ", off.dump(), " end before they begin");
    const uint64_t need = nbits / 8;
    if (e - b != need)
      throw_error(ErrorKind::Format, where, ": shape ", shape_str(t.shape), " of ", dname, " needs ", need,
                  " bytes but data_offsets ", off.dump(), " cover ", e - b);
    if (e > data_size)
      throw_error(ErrorKind::Format, where, ": data_offsets ", off.dump(),
                  " run past the end of the data section (", data_size, " bytes)");
    t.begin = (size_t)b;
    t.end = (size_t)e;
    tensors_.push_back(std::move(t));
  }

  // Tile check: sorted by offset, each tensor starts where the previous one ended.
  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
  size_t expect = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : tensors_) {
    if (t.begin < expect)
      throw_error(ErrorKind::Format, path_, ": tensor ", squote(t.name), " (bytes [", t.begin, ", ", t.end,
                  ")) overlaps tensor ", squote(prev->name), " (bytes [", prev->begin, ", ", prev->end, "))");
    if (t.begin > expect)
      throw_error(ErrorKind::Format, path_, ": data section bytes [", expect, ", ", t.begin,
                  ") belong to no tensor (a hole before tensor ", squote(t.name),
                  "); safetensors requires tensors to be contiguous");
    expect = t.end;
    prev = &t;
  }
  if (expect != data_size)
    throw_error(ErrorKind::Format, path_, ": data section has ", data_size, " bytes but the tensors cover ",
                expect, " (", data_size - expect, " trailing bytes belong to no tensor)");
  for (size_t i = 0; i < tensors_.size(); i++) index_[tensors_[i].name] = i;
}

bool SafetensorsFile::has(const std::string& name) const {
  return index_.count(name) != 0;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    throw_error(ErrorKind::Format, path_, ": no tensor named ", squote(name), " (the file holds ",
                tensors_.size(), " tensors)");
  return tensors_[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& t = info(name);
  char* p = const_cast<char*>(data_) + t.begin;
  size_t elem = (size_t)std::max(1, dtype_bits(t.dtype) / 8);
  if ((uintptr_t)p % elem != 0) {  // misaligned for the element type: hand out an aligned copy
    Tensor c = Tensor::empty(t.shape, t.dtype);
    std::memcpy(c.raw(), p, t.end - t.begin);
    return c;
  }
  std::shared_ptr<const SafetensorsFile> keep = self_.lock();
  QT_CHECK(keep != nullptr, "SafetensorsFile must be owned by the shared_ptr open() returned");
  return Tensor::borrow(p, t.shape, t.dtype, Device::CPU, std::const_pointer_cast<SafetensorsFile>(keep));
}

}  // namespace qtune
