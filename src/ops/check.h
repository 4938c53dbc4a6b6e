// Argument checks shared by the op dispatchers (ops/<family>.cpp): every failure is an ErrorKind::Shape
// (or Unsupported) error that names the op, the argument and what was expected vs what came.
#pragma once
#include <initializer_list>
#include <string>

#include "core/error.h"
#include "core/tensor.h"

namespace qtune {
namespace ops_detail {

struct Arg {
  const char* name;
  const Tensor* t;
};

// All defined, all on one device; returns that device.
Device check_device(const char* op, std::initializer_list<Arg> args);
// t's dtype is one of dtypes.
void check_dtype(const char* op, Arg a, std::initializer_list<DType> dtypes);
// t has exactly this shape.
void check_shape(const char* op, Arg a, const Shape& want);
// t has ndim dims.
void check_ndim(const char* op, Arg a, int ndim);
// t's last dim is n; returns numel / n (the row count).
int64_t check_rows(const char* op, Arg a, int64_t n);
// Throws Unsupported: the tensors are on the GPU but this build has no CUDA backend (or the op has none).
[[noreturn]] void no_cuda(const char* op);

}  // namespace ops_detail
}  // namespace qtune
