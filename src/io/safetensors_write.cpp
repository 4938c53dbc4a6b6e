// safetensors writer. Layout as the reference writer produces it: compact JSON header ("__metadata__"
// first when present, then each tensor as {"dtype","shape","data_offsets"}), padded with spaces so that
// 8 + N is a multiple of 8 (data stays 8-byte aligned), then the tensors' bytes back to back in the order
// given. The file is written beside its destination under a temporary name and renamed into place, so a
// reader never sees half a file.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include "io/json_util.h"
#include "io/safetensors.h"

namespace qtune {

using ojson = nlohmann::ordered_json;

namespace {

struct TempFile {
  std::string path;
  FILE* f = nullptr;
  bool done = false;
  ~TempFile() {
    if (f) std::fclose(f);
    if (!done && !path.empty()) std::remove(path.c_str());
  }
};

void write_all(TempFile& t, const void* p, size_t n, const std::string& dest) {
  if (n && std::fwrite(p, 1, n, t.f) != n)
    throw_error(ErrorKind::Io, dest, ": write failed: ", std::strerror(errno));
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  ojson header = ojson::object();
  if (!metadata.empty()) {
    ojson m = ojson::object();
    for (const auto& kv : metadata) m[kv.first] = kv.second;
    header["__metadata__"] = m;
  }
  std::set<std::string> names;
  size_t offset = 0;
  for (const auto& nt : tensors) {
    const std::string& name = nt.first;
    const Tensor& t = nt.second;
    if (name.empty() || name == "__metadata__")
      throw_error(ErrorKind::Usage, path, ": invalid tensor name '", name, "'");
    if (!names.insert(name).second) throw_error(ErrorKind::Usage, path, ": tensor '", name, "' given twice");
    if (!t.defined()) throw_error(ErrorKind::Usage, path, ": tensor '", name, "' is undefined");
    if (t.dtype() == DType::Q4)
      throw_error(ErrorKind::Unsupported, path, ": tensor '", name,
                  "' is packed 4-bit (Q4); store it as U8 bytes as bitsandbytes does");
    ojson e = ojson::object();
    e["dtype"] = dtype_name(t.dtype());
    e["shape"] = t.shape();
    e["data_offsets"] = {offset, offset + t.nbytes()};
    header[name] = e;
    offset += t.nbytes();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::type_error& e) {  // a name or metadata string that is not UTF-8
    throw_error(ErrorKind::Usage, path, ": cannot write header: ", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t n = text.size();
  unsigned char len[8];
  for (int i = 0; i < 8; i++) len[i] = (unsigned char)(n >> (8 * i));

  TempFile tmp;
  tmp.path = path + ".tmp." + std::to_string((long)getpid());
  tmp.f = std::fopen(tmp.path.c_str(), "wb");
  if (!tmp.f) throw_error(ErrorKind::Io, path, ": cannot create ", tmp.path, ": ", std::strerror(errno));
  write_all(tmp, len, 8, path);
  write_all(tmp, text.data(), text.size(), path);
  for (const auto& nt : tensors) {
    Tensor host = nt.second.to(Device::CPU);  // device tensors are copied to the host
    write_all(tmp, host.raw(), host.nbytes(), path);
  }
  if (std::fflush(tmp.f) != 0 || fsync(fileno(tmp.f)) != 0)
    throw_error(ErrorKind::Io, path, ": flush failed: ", std::strerror(errno));
  int rc = std::fclose(tmp.f);
  tmp.f = nullptr;
  if (rc != 0) throw_error(ErrorKind::Io, path, ": close failed: ", std::strerror(errno));
  if (std::rename(tmp.path.c_str(), path.c_str()) != 0)
    throw_error(ErrorKind::Io, path, ": cannot rename ", tmp.path, " into place: ", std::strerror(errno));
  tmp.done = true;
}

}  // namespace qtune
