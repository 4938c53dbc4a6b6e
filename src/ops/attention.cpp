// Dispatch for ops/attention.h: checks, then the CPU or CUDA kernel.
#include "ops/attention.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace qtune {
using namespace ops_detail;

void attention_forward(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset,
                       int64_t kv_len) {
  const char* op = "attention_forward";
  Device dev = check_device(op, {{"out", &out}, {"q", &q}, {"k", &k}, {"v", &v}});
  check_ndim(op, {"q", &q}, 4);
  check_ndim(op, {"k", &k}, 4);
  int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  int64_t Smax = k.size(1), Hkv = k.size(2);
  check_shape(op, {"k", &k}, {B, Smax, Hkv, D});
  check_shape(op, {"v", &v}, {B, Smax, Hkv, D});
  check_shape(op, {"out", &out}, q.shape());
  if (Hkv == 0 || Hq % Hkv != 0)
    throw_error(ErrorKind::Shape, op, ": query heads ", Hq, " are not a multiple of kv heads ", Hkv);
  if (q_offset < 0 || q_offset + T > kv_len || kv_len > Smax)
    throw_error(ErrorKind::Shape, op, ": need 0 <= q_offset (", q_offset, ") and q_offset + T (",
                q_offset + T, ") <= kv_len (", kv_len, ") <= cache rows (", Smax, ")");
  if (q.dtype() != k.dtype() || k.dtype() != v.dtype())
    throw_error(ErrorKind::Shape, op, ": q, k, v dtypes differ: ", q.describe(), ", ", k.describe(), ", ",
                v.describe());
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::attention_forward(out, q, k, v, q_offset, kv_len);
#else
    no_cuda(op);
#endif
  }
  check_dtype(op, {"q", &q}, {DType::F32});
  check_dtype(op, {"out", &out}, {DType::F32});
  cpu::attention_forward(out, q, k, v, q_offset, kv_len);
}

}  // namespace qtune
