#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/allocator.h"
#include "core/error.h"

namespace qtune {

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); i++) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Storage::~Storage() {
  if (!owned || !ptr) return;
  if (device == Device::CPU)
    std::free(ptr);
  else
    device_free(ptr);
}

static void check_shape(const Shape& shape) {
  for (int64_t d : shape)
    if (d < 0) throw_error(ErrorKind::Shape, "negative dimension in shape ", shape_str(shape));
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  check_shape(shape);
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  auto st = std::make_shared<Storage>();
  st->nbytes = dtype_nbytes(dtype, shape_numel(shape));
  st->device = device;
  st->owned = true;
  size_t alloc = st->nbytes ? st->nbytes : 1;
  if (device == Device::CPU) {
    // 64-byte alignment for vector loads; aligned_alloc needs a multiple of the alignment.
    st->ptr = std::aligned_alloc(64, (alloc + 63) / 64 * 64);
    if (!st->ptr)
      throw_error(ErrorKind::OutOfMemory, "out of host memory allocating ", st->nbytes, " bytes for ",
                  dtype_name(dtype), shape_str(shape));
  } else {
    st->ptr = device_malloc(alloc);
  }
  t.storage_ = std::move(st);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.set_zero();
  return t;
}

void Tensor::set_zero() {
  zero_bytes(raw(), device_, nbytes());
}

Tensor Tensor::borrow(void* data, const Shape& shape, DType dtype, Device device,
                      std::shared_ptr<void> keep_alive) {
  check_shape(shape);
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  auto st = std::make_shared<Storage>();
  st->ptr = data;
  st->nbytes = dtype_nbytes(dtype, shape_numel(shape));
  st->device = device;
  st->owned = false;
  st->keep_alive = std::move(keep_alive);
  t.storage_ = std::move(st);
  return t;
}

Tensor Tensor::from_f32(const std::vector<float>& v, const Shape& shape) {
  if ((int64_t)v.size() != shape_numel(shape))
    throw_error(ErrorKind::Shape, "from_f32: ", v.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(shape, DType::F32);
  std::memcpy(t.raw(), v.data(), v.size() * 4);
  return t;
}

Tensor Tensor::from_i32(const std::vector<int32_t>& v, const Shape& shape) {
  if ((int64_t)v.size() != shape_numel(shape))
    throw_error(ErrorKind::Shape, "from_i32: ", v.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(shape, DType::I32);
  std::memcpy(t.raw(), v.data(), v.size() * 4);
  return t;
}

int64_t Tensor::size(int dim) const {
  int n = ndim();
  int d = dim < 0 ? dim + n : dim;
  if (d < 0 || d >= n) throw_error(ErrorKind::Shape, "dim ", dim, " out of range for ", describe());
  return shape_[d];
}

Tensor Tensor::to(Device d) const {
  if (d == device_) return *this;
  Tensor t = empty(shape_, dtype_, d);
  copy_bytes(t.raw(), d, raw(), device_, nbytes());
  return t;
}

Tensor Tensor::to_dtype(DType dt) const {
  if (dt == dtype_) return *this;
  if (device_ != Device::CPU)
    throw_error(ErrorKind::Unsupported, "Tensor::to_dtype runs on the CPU; got ", describe());
  auto is_float = [](DType x) { return x == DType::F32 || x == DType::F16 || x == DType::BF16; };
  if (!is_float(dtype_) || !is_float(dt))
    throw_error(ErrorKind::Unsupported, "cannot convert ", dtype_name(dtype_), " to ", dtype_name(dt));
  Tensor out = empty(shape_, dt);
  int64_t n = numel();
  std::vector<float> tmp;
  const float* src = nullptr;
  if (dtype_ == DType::F32) {
    src = data<float>();
  } else {
    tmp = to_f32_vector();
    src = tmp.data();
  }
  if (dt == DType::F32) {
    std::memcpy(out.raw(), src, n * 4);
  } else if (dt == DType::BF16) {
    uint16_t* o = out.data<uint16_t>();
    for (int64_t i = 0; i < n; i++) o[i] = f32_to_bf16(src[i]);
  } else {
    uint16_t* o = out.data<uint16_t>();
    for (int64_t i = 0; i < n; i++) o[i] = f32_to_f16(src[i]);
  }
  return out;
}

Tensor Tensor::reshape(const Shape& s) const {
  Shape ns = s;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < ns.size(); i++) {
    if (ns[i] == -1) {
      if (infer >= 0) throw_error(ErrorKind::Shape, "reshape: two -1 dims in ", shape_str(s));
      infer = (int)i;
    } else {
      known *= ns[i];
    }
  }
  if (infer >= 0) ns[infer] = known ? numel() / known : 0;
  if (shape_numel(ns) != numel())
    throw_error(ErrorKind::Shape, "reshape: cannot view ", describe(), " as ", shape_str(s));
  Tensor t = *this;
  t.shape_ = ns;
  return t;
}

Tensor Tensor::slice0(int64_t start, int64_t len) const {
  if (ndim() == 0 || start < 0 || len < 0 || start + len > shape_[0])
    throw_error(ErrorKind::Shape, "slice0(", start, ", ", len, ") out of range for ", describe());
  int64_t row = numel() / (shape_[0] ? shape_[0] : 1);
  if ((row * dtype_bits(dtype_)) % 8 != 0)
    throw_error(ErrorKind::Shape, "slice0: rows of ", describe(), " are not byte aligned");
  Tensor t = *this;
  t.offset_ += (size_t)(start * row * dtype_bits(dtype_) / 8);
  t.shape_[0] = len;
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device_);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  if (src.dtype_ != dtype_ || src.numel() != numel())
    throw_error(ErrorKind::Shape, "copy_from: ", src.describe(), " into ", describe());
  copy_bytes(raw(), device_, src.raw(), src.device_, nbytes());
}

std::vector<float> Tensor::to_f32_vector() const {
  Tensor c = to(Device::CPU);
  int64_t n = numel();
  std::vector<float> v(n);
  switch (dtype_) {
    case DType::F32: std::memcpy(v.data(), c.raw(), n * 4); break;
    case DType::BF16:
      for (int64_t i = 0; i < n; i++) v[i] = bf16_to_f32(c.data<uint16_t>()[i]);
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; i++) v[i] = f16_to_f32(c.data<uint16_t>()[i]);
      break;
    case DType::I32:
      for (int64_t i = 0; i < n; i++) v[i] = (float)c.data<int32_t>()[i];
      break;
    default: throw_error(ErrorKind::Unsupported, "to_f32_vector: unsupported dtype ", describe());
  }
  return v;
}

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + " " + device_name(device_);
}

}  // namespace qtune
