// safetensors files (https://github.com/huggingface/safetensors format): an 8-byte little-endian header
// length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}},
// then the data section. Reading mmaps the file and hands out zero-copy borrowed tensors; every field is
// validated and every failure names the file and the tensor.
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace qtune {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  size_t begin = 0, end = 0;  // byte range inside the data section
};

class SafetensorsFile {
 public:
  // Maps and validates the file; throws ErrorKind::Format naming the file (and tensor) on any defect,
  // ErrorKind::Io when it cannot be opened or mapped.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  size_t file_size() const { return map_size_; }
  // N: the JSON header's bytes (padding included) after the 8-byte length.
  size_t header_size() const { return header_size_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data order (by offset)
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws when absent
  // A CPU tensor borrowing the mapped bytes; keeps this file mapped while alive. (When the header length
  // leaves the data misaligned for the element type, the tensor is an owned aligned copy instead.)
  Tensor get(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  void parse_header();
  size_t header_size_ = 0;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const char* data_ = nullptr;  // start of the data section
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::weak_ptr<SafetensorsFile> self_;
};

// All weights of a model folder: model.safetensors, or the shards named by model.safetensors.index.json
// (or a single file path, or the index file's path). Shards are opened lazily; get/info are thread-safe.
class WeightStore {
 public:
  static WeightStore open(const std::string& path);
  bool has(const std::string& name) const;
  Tensor get(const std::string& name) const;  // throws naming the tensor and the folder
  const TensorInfo& info(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  std::string file_of(const std::string& name) const;
  const std::string& root() const { return root_; }
  size_t open_shard_count() const;  // shards mapped so far (they open lazily)

 private:
  std::string root_;
  std::map<std::string, std::string> where_;  // tensor -> shard path
  mutable std::map<std::string, std::shared_ptr<SafetensorsFile>> open_;
  std::shared_ptr<std::mutex> mu_ =
      std::make_shared<std::mutex>();  // guards open_ (get() may run on threads)
  std::shared_ptr<SafetensorsFile> shard(const std::string& file) const;
};

// Writes tensors (any device; copied to host) in the given order, atomically (temp file + rename).
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace qtune
