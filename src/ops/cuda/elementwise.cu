// Element-wise CUDA ops: SwiGLU (out = silu(gate) * up), residual add (x += y), dtype conversion, and
// the embedding gather. Math in f32, one rounding on the store. Grid-stride loops over packs of eight
// elements (16-byte accesses) when the sizes and pointers allow it, else over elements.
#include "core/allocator.h"
#include "core/silu_mul.cuh"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"

namespace qtune {
namespace cuda {

namespace {

int grid_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  int cap = context().num_sms * 16;
  return (int)(b < cap ? (b > 0 ? b : 1) : cap);
}

// out[i] = silu(gate[i]) * up[i] (core/silu_mul.cuh).
// packed: eight elements per step (packs_of_8), else one.
template <class TI, class TO>
__global__ void swiglu_kernel(TO* __restrict__ out, const TI* __restrict__ gate, const TI* __restrict__ up,
                              int64_t n, bool packed) {
  pdl_trigger();
  pdl_wait();
  const int64_t start = blockIdx.x * (int64_t)blockDim.x + threadIdx.x,
                stride = (int64_t)gridDim.x * blockDim.x;
  if (packed) {
    for (int64_t i = start * 8; i < n; i += stride * 8) {
      float g[8], u[8];
      load8(gate + i, g);
      load8(up + i, u);
#pragma unroll
      for (int j = 0; j < 8; j++) g[j] = silu_mul(g[j], u[j]);
      store8(out + i, g);
    }
    return;
  }
  for (int64_t i = start; i < n; i += stride) {
    float g = to_f32(gate[i]);
    float u = to_f32(up[i]);
    out[i] = from_f32<TO>(silu_mul(g, u));
  }
}

// x[i] += y[i] (sum in f32, rounded once to x's type).
template <class TX, class TY>
__global__ void add_kernel(TX* __restrict__ x, const TY* __restrict__ y, int64_t n, bool packed) {
  pdl_trigger();
  pdl_wait();
  const int64_t start = blockIdx.x * (int64_t)blockDim.x + threadIdx.x,
                stride = (int64_t)gridDim.x * blockDim.x;
  if (packed) {
    for (int64_t i = start * 8; i < n; i += stride * 8) {
      float a[8], b[8];
      load8(x + i, a);
      load8(y + i, b);
#pragma unroll
      for (int j = 0; j < 8; j++) a[j] += b[j];
      store8(x + i, a);
    }
    return;
  }
  for (int64_t i = start; i < n; i += stride) x[i] = from_f32<TX>(to_f32(x[i]) + to_f32(y[i]));
}

// out[i] = in[i] in out's type.
template <class TI, class TO>
__global__ void convert_kernel(TO* __restrict__ out, const TI* __restrict__ in, int64_t n, bool packed) {
  const int64_t start = blockIdx.x * (int64_t)blockDim.x + threadIdx.x,
                stride = (int64_t)gridDim.x * blockDim.x;
  if (packed) {
    for (int64_t i = start * 8; i < n; i += stride * 8) {
      float v[8];
      load8(in + i, v);
      store8(out + i, v);
    }
    return;
  }
  for (int64_t i = start; i < n; i += stride) out[i] = from_f32<TO>(to_f32(in[i]));
}

// out[n, :] = table[ids[n], :]; an id outside [0, V) zeroes its row and records the smallest such n.
template <class TI, class TO>
__global__ void embedding_kernel(TO* __restrict__ out, const int32_t* __restrict__ ids,
                                 const TI* __restrict__ table, int V, int C, int* __restrict__ bad_pos) {
  pdl_trigger();
  int n = blockIdx.x;
  int id = ids[n];
  TO* o = out + (int64_t)n * C;
  if (id < 0 || id >= V) {
    if (threadIdx.x == 0) atomicMin(bad_pos, n);
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = from_f32<TO>(0.0f);
    return;
  }
  const TI* row = table + (int64_t)id * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = from_f32<TO>(to_f32(row[c]));
}

}  // namespace

void swiglu_forward(Tensor& out, const Tensor& gate, const Tensor& up) {
  const char* op = "swiglu_forward";
  require_cuda(out, op, "out");
  require_cuda(gate, op, "gate");
  require_cuda(up, op, "up");
  if (gate.shape() != up.shape() || gate.dtype() != up.dtype())
    throw_error(ErrorKind::Shape, op, ": gate ", gate.describe(), " and up ", up.describe(), " differ");
  if (out.numel() != gate.numel())
    throw_error(ErrorKind::Shape, op, ": out ", out.describe(), " does not match gate ", gate.describe());
  int64_t n = gate.numel();
  if (n == 0) return;
  const bool packed = packs_of_8(n, {&out, &gate, &up});
  QT_DISPATCH_FLOAT(gate.dtype(), op, TI, {
    QT_DISPATCH_FLOAT(out.dtype(), op, TO, {
      QT_CUDA_CHECK(launch_pdl(swiglu_kernel<TI, TO>, dim3(grid_for(packed ? n / 8 : n, 256)), dim3(256), 0,
                               stream(), out.data<TO>(), gate.data<TI>(), up.data<TI>(), n, packed));
    });
  });
  QT_CUDA_CHECK_LAUNCH("swiglu_kernel");
}

void add_inplace(Tensor& x, const Tensor& y) {
  const char* op = "add_inplace";
  require_cuda(x, op, "x");
  require_cuda(y, op, "y");
  if (x.numel() != y.numel())
    throw_error(ErrorKind::Shape, op, ": x ", x.describe(), " and y ", y.describe(),
                " differ in element count");
  int64_t n = x.numel();
  if (n == 0) return;
  const bool packed = packs_of_8(n, {&x, &y});
  QT_DISPATCH_FLOAT(x.dtype(), op, TX, {
    QT_DISPATCH_FLOAT(y.dtype(), op, TY, {
      QT_CUDA_CHECK(launch_pdl(add_kernel<TX, TY>, dim3(grid_for(packed ? n / 8 : n, 256)), dim3(256), 0,
                               stream(), x.data<TX>(), y.data<TY>(), n, packed));
    });
  });
  QT_CUDA_CHECK_LAUNCH("add_kernel");
}

void convert(Tensor& out, const Tensor& in) {
  const char* op = "convert";
  require_cuda(out, op, "out");
  require_cuda(in, op, "in");
  if (out.numel() != in.numel())
    throw_error(ErrorKind::Shape, op, ": out ", out.describe(), " and in ", in.describe(),
                " have different element counts");
  int64_t n = in.numel();
  if (n == 0) return;
  if (out.dtype() == in.dtype()) {
    QT_CUDA_CHECK(cudaMemcpyAsync(out.raw(), in.raw(), in.nbytes(), cudaMemcpyDeviceToDevice, stream()));
    return;
  }
  const bool packed = packs_of_8(n, {&out, &in});
  QT_DISPATCH_FLOAT(in.dtype(), op, TI, {
    QT_DISPATCH_FLOAT(out.dtype(), op, TO, {
      convert_kernel<TI, TO>
          <<<grid_for(packed ? n / 8 : n, 256), 256, 0, stream()>>>(out.data<TO>(), in.data<TI>(), n, packed);
    });
  });
  QT_CUDA_CHECK_LAUNCH("convert_kernel");
}

void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) {
  const char* op = "embedding_forward";
  require_cuda(out, op, "out");
  require_cuda(ids, op, "ids");
  require_cuda(table, op, "table");
  require_dtype(ids, op, "ids", DType::I32);
  if (table.ndim() != 2) throw_error(ErrorKind::Shape, op, ": table must be [V, C], got ", table.describe());
  int V = checked_int(table.size(0), op), C = checked_int(table.size(1), op);
  int N = checked_int(ids.numel(), op);
  if (out.numel() != (int64_t)N * C)
    throw_error(ErrorKind::Shape, op, ": out ", out.describe(), " is not [", N, ", ", C, "]");
  if (N == 0) return;
  // One int on the device for the first bad position; 0x7f7f7f7f (memset byte 0x7f) means none.
  static int* bad_dev = static_cast<int*>(device_malloc(sizeof(int)));
  static int* bad_host = static_cast<int*>(host_pinned_malloc(sizeof(int)));
  QT_CUDA_CHECK(cudaMemsetAsync(bad_dev, 0x7f, sizeof(int), stream()));
  int threads = C >= 1024 ? 256 : 128;
  QT_DISPATCH_FLOAT(table.dtype(), op, TI, {
    QT_DISPATCH_FLOAT(out.dtype(), op, TO, {
      embedding_kernel<TI, TO>
          <<<N, threads, 0, stream()>>>(out.data<TO>(), ids.data<int32_t>(), table.data<TI>(), V, C, bad_dev);
    });
  });
  QT_CUDA_CHECK_LAUNCH("embedding_kernel");
  QT_CUDA_CHECK(cudaMemcpyAsync(bad_host, bad_dev, sizeof(int), cudaMemcpyDeviceToHost, stream()));
  synchronize();
  if (*bad_host != 0x7f7f7f7f) {
    int32_t bad_id = 0;
    QT_CUDA_CHECK(
        cudaMemcpy(&bad_id, ids.data<int32_t>() + *bad_host, sizeof(int32_t), cudaMemcpyDeviceToHost));
    throw_error(ErrorKind::Shape, op, ": token id ", bad_id, " at position ", *bad_host,
                " is outside the vocabulary [0, ", V, ")");
  }
}

}  // namespace cuda
}  // namespace qtune
