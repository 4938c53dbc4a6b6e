// Tensor: a contiguous n-d array with a dtype, on the CPU or a CUDA device, owning its storage or
// borrowing it (an mmap'd safetensors file keeps itself alive through keep_alive). No strides: views
// are reshapes and leading-dimension slices of contiguous memory, as in llm.c.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace qtune {

enum class Device { CPU, CUDA };
const char* device_name(Device d);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3]"
int64_t shape_numel(const Shape& s);

struct Storage {
  void* ptr = nullptr;
  size_t nbytes = 0;
  Device device = Device::CPU;
  bool owned = false;
  std::shared_ptr<void> keep_alive;  // for borrowed memory
  ~Storage();
};

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised memory (device memory comes from the caching allocator).
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::CPU);
  // Wraps memory owned by someone else; keep_alive (may be null) holds that owner.
  static Tensor borrow(void* data, const Shape& shape, DType dtype, Device device,
                       std::shared_ptr<void> keep_alive);
  // CPU tensor copied from host values (F32 / I32 convenience constructors).
  static Tensor from_f32(const std::vector<float>& v, const Shape& shape);
  static Tensor from_i32(const std::vector<int32_t>& v, const Shape& shape);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return (int)shape_.size(); }
  int64_t size(int dim) const;  // negative dims count from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return dtype_nbytes(dtype_, numel()); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool is_cuda() const { return device_ == Device::CUDA; }

  void* raw() const { return storage_ ? (char*)storage_->ptr + offset_ : nullptr; }
  template <class T>
  T* data() const { return static_cast<T*>(raw()); }

  // Copies to another device (returns a tensor sharing storage when already there).
  Tensor to(Device d) const;
  // CPU conversion between F32, F16, BF16 (and identity for others).
  Tensor to_dtype(DType t) const;
  // Same storage, new shape with the same element count; one dim may be -1.
  Tensor reshape(const Shape& s) const;
  // Rows [start, start+len) of dim 0, sharing storage.
  Tensor slice0(int64_t start, int64_t len) const;
  Tensor clone() const;
  // Copies src's bytes into this tensor (same dtype and element count, any devices).
  void copy_from(const Tensor& src);
  // Fills this tensor's bytes with zeros (on the GPU without waiting for the host, see zero_bytes).
  void set_zero();
  // CPU F32 values as a vector (converting F16/BF16, copying from the device if needed).
  std::vector<float> to_f32_vector() const;

  std::string describe() const;  // "BF16[2, 3] cuda"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

}  // namespace qtune
