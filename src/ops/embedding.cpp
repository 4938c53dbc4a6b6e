// Dispatch for ops/embedding.h: checks, then the CPU or CUDA kernel.
#include "ops/embedding.h"

#include "ops/check.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace qtune {
using namespace ops_detail;

void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) {
  const char* op = "embedding_forward";
  Device dev = check_device(op, {{"out", &out}, {"ids", &ids}, {"table", &table}});
  check_dtype(op, {"ids", &ids}, {DType::I32});
  check_ndim(op, {"table", &table}, 2);
  check_dtype(op, {"table", &table}, {DType::F32, DType::BF16, DType::F16});
  if (out.dtype() != DType::F32 && out.dtype() != table.dtype())
    throw_error(ErrorKind::Shape, op, ": 'out' must be F32 or the table's dtype ", dtype_name(table.dtype()),
                ", got ", out.describe());
  int64_t C = table.size(1);
  int64_t rows = check_rows(op, {"out", &out}, C);
  if (rows != ids.numel())
    throw_error(ErrorKind::Shape, op, ": 'out' ", out.describe(), " has ", rows, " rows for ", ids.numel(),
                " ids");
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::embedding_forward(out, ids, table);
#else
    no_cuda(op);
#endif
  }
  const int32_t* id = ids.data<int32_t>();
  for (int64_t n = 0; n < ids.numel(); n++)
    if (id[n] < 0 || id[n] >= table.size(0))
      throw_error(ErrorKind::Shape, op, ": token id ", id[n], " at position ", n,
                  " is outside the vocabulary [0, ", table.size(0), ")");
  cpu::embedding_forward(out, ids, table);
}

}  // namespace qtune
