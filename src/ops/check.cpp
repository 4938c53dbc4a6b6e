// Argument checks for the op dispatchers; see check.h.
#include "ops/check.h"

namespace qtune {
namespace ops_detail {

Device check_device(const char* op, std::initializer_list<Arg> args) {
  const Arg* first = nullptr;
  for (const Arg& a : args) {
    if (!a.t->defined()) throw_error(ErrorKind::Shape, op, ": tensor '", a.name, "' is undefined");
    if (!first) first = &a;
    if (a.t->device() != first->t->device())
      throw_error(ErrorKind::Shape, op, ": tensors on different devices: '", first->name, "' is ",
                  first->t->describe(), ", '", a.name, "' is ", a.t->describe());
  }
  QT_CHECK(first != nullptr);
  return first->t->device();
}

void check_dtype(const char* op, Arg a, std::initializer_list<DType> dtypes) {
  for (DType d : dtypes)
    if (a.t->dtype() == d) return;
  std::string want;
  for (DType d : dtypes) want += std::string(want.empty() ? "" : " or ") + dtype_name(d);
  throw_error(ErrorKind::Shape, op, ": '", a.name, "' must be ", want, ", got ", a.t->describe());
}

void check_shape(const char* op, Arg a, const Shape& want) {
  if (a.t->shape() != want)
    throw_error(ErrorKind::Shape, op, ": '", a.name, "' must have shape ", shape_str(want), ", got ",
                a.t->describe());
}

void check_ndim(const char* op, Arg a, int ndim) {
  if (a.t->ndim() != ndim)
    throw_error(ErrorKind::Shape, op, ": '", a.name, "' must have ", ndim, " dims, got ", a.t->describe());
}

int64_t check_rows(const char* op, Arg a, int64_t n) {
  if (a.t->ndim() < 1 || a.t->size(-1) != n)
    throw_error(ErrorKind::Shape, op, ": '", a.name, "' must have last dim ", n, ", got ", a.t->describe());
  return n ? a.t->numel() / n : 0;
}

void no_cuda(const char* op) {
  throw_error(ErrorKind::Unsupported, op, ": tensors are on the GPU but ", op,
              " has no CUDA kernel in this build");
}

}  // namespace ops_detail
}  // namespace qtune
