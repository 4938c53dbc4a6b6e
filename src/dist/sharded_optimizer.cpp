// Sharded optimizer states (see sharded_optimizer.h). Parts of the checkpoint travel as safetensors bytes
// through broadcast (the communicator has no point-to-point send); checkpoints are rare and the states of
// adapters small.
#include "dist/sharded_optimizer.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "io/json_util.h"
#include "io/safetensors.h"

namespace qtune {
namespace fs = std::filesystem;

namespace {

Tensor bytes_of(const Tensor& t) {
  return Tensor::borrow(t.raw(), {(int64_t)t.nbytes()}, DType::U8, t.device(), nullptr);
}

// A scratch file name of this process.
std::string scratch(const std::string& what) {
  return (fs::temp_directory_path() / ("qtune-" + std::to_string(getpid()) + "-" + what + ".safetensors"))
      .string();
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  if (!f) throw_error(ErrorKind::Io, "cannot read ", path);
  return ss.str();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), (std::streamsize)bytes.size());
  if (!f) throw_error(ErrorKind::Io, "cannot write ", path);
}

const char* kSuffixes[] = {".state1", ".state2", ".absmax1", ".absmax2"};

}  // namespace

std::vector<int> assign_owners(const std::vector<ParamRef>& refs, int world) {
  std::vector<size_t> order(refs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return refs[a].param.numel() > refs[b].param.numel(); });
  std::vector<int64_t> load(std::max(world, 1), 0);
  std::vector<int> owner(refs.size(), 0);
  for (size_t i : order) {
    const int r = (int)(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = r;
    load[r] += refs[i].param.numel();
  }
  return owner;
}

std::vector<ParamRef> owned(const std::vector<ParamRef>& refs, const std::vector<int>& owner, int rank) {
  std::vector<ParamRef> out;
  for (size_t i = 0; i < refs.size(); ++i)
    if (owner[i] == rank) out.push_back(refs[i]);
  return out;
}

int broadcast_from_owners(Communicator& comm, const std::vector<ParamRef>& refs,
                          const std::vector<int>& owner) {
  const int world = comm.world_size();
  if (world == 1) return 0;
  int calls = 0;
  for (int r = 0; r < world; ++r) {
    int64_t bytes = 0;
    for (size_t i = 0; i < refs.size(); ++i) {
      if (owner[i] != r) continue;
      if (refs[i].param.device() != comm.device())
        throw_error(ErrorKind::Unsupported, "--fsdp: parameter ", refs[i].name, " is ",
                    refs[i].param.describe(), ", off the communicator's device");
      bytes += (int64_t)refs[i].param.nbytes();
    }
    if (bytes == 0) continue;
    Tensor flat = Tensor::empty({bytes}, DType::U8, comm.device());
    auto each = [&](bool pack) {
      int64_t off = 0;
      for (size_t i = 0; i < refs.size(); ++i) {
        if (owner[i] != r) continue;
        Tensor b = bytes_of(refs[i].param);
        if (pack)
          flat.slice0(off, b.numel()).copy_from(b);
        else
          b.copy_from(flat.slice0(off, b.numel()));
        off += b.numel();
      }
    };
    if (comm.rank() == r) each(true);
    comm.broadcast(flat, r);
    ++calls;
    if (comm.rank() != r) each(false);
  }
  return calls;
}

std::vector<std::string> gather_optimizer_parts(Communicator& comm, const Optimizer& opt) {
  const std::string mine = scratch("opt-part");
  opt.save(mine);
  std::string bytes = read_file(mine);
  fs::remove(mine);
  if (comm.world_size() == 1) return {bytes};
  std::vector<std::string> parts;
  for (int r = 0; r < comm.world_size(); ++r) {
    const double n = comm.all_reduce_scalar(comm.rank() == r ? (double)bytes.size() : 0.0, ReduceOp::Sum);
    Tensor blob = Tensor::empty({(int64_t)n}, DType::U8, comm.device());
    if (comm.rank() == r) {
      Tensor host = Tensor::borrow(bytes.data(), {(int64_t)bytes.size()}, DType::U8, Device::CPU, nullptr);
      blob.copy_from(host);
    }
    comm.broadcast(blob, r);
    if (comm.rank() == 0) {
      Tensor host = blob.to(Device::CPU);
      parts.emplace_back((const char*)host.raw(), host.nbytes());
    }
  }
  return parts;
}

void write_merged_optimizer(const std::vector<std::string>& parts, const std::string& path) {
  std::vector<std::shared_ptr<SafetensorsFile>> files;
  for (size_t r = 0; r < parts.size(); ++r) {
    const std::string p = scratch("opt-merge-" + std::to_string(r));
    write_file(p, parts[r]);
    files.push_back(SafetensorsFile::open(p));  // mapped: the name can go now
    fs::remove(p);
  }
  if (files.empty()) throw_error(ErrorKind::Usage, "write_merged_optimizer: no parts");
  std::map<std::string, std::string> meta = files[0]->metadata();
  nlohmann::json steps = nlohmann::json::object();
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& f : files) {
    const auto& m = f->metadata();
    if (m.at("optimizer") != meta.at("optimizer"))
      throw_error(ErrorKind::Format, "optimizer parts of different kinds: ", m.at("optimizer"), " and ",
                  meta.at("optimizer"));
    nlohmann::json s = parse_json_text(m.at("steps"), "optimizer part steps", ErrorKind::Format);
    for (auto it = s.begin(); it != s.end(); ++it) steps[it.key()] = it.value();
    for (const TensorInfo& t : f->tensors()) tensors.emplace_back(t.name, f->get(t.name));
  }
  meta["steps"] = steps.dump();
  write_safetensors(path, tensors, meta);
}

void load_owned_optimizer(Optimizer& opt, const std::string& path) {
  auto f = SafetensorsFile::open(path);
  std::map<std::string, std::string> meta = f->metadata();
  auto steps_it = meta.find("steps");
  if (steps_it == meta.end())
    throw_error(ErrorKind::Format, path, ": not a qtune optimizer state (metadata 'steps' missing)");
  nlohmann::json all = parse_json_text(steps_it->second, path + " metadata 'steps'", ErrorKind::Format);
  nlohmann::json steps = nlohmann::json::object();
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ParamGroup& g : opt.groups())
    for (const ParamRef& p : g.params) {
      if (!all.contains(p.name)) continue;
      steps[p.name] = all[p.name];
      for (const char* s : kSuffixes)
        if (f->has(p.name + s)) tensors.emplace_back(p.name + s, f->get(p.name + s));
    }
  meta["steps"] = steps.dump();
  const std::string mine = scratch("opt-owned");
  write_safetensors(mine, tensors, meta);
  try {
    opt.load(mine);
  } catch (const Error&) {
    fs::remove(mine);
    throw;
  }
  fs::remove(mine);
}

}  // namespace qtune
