// The CUDA context: created once, on first use, and never destroyed (tensors may be freed during static
// destruction). The stream is a blocking stream, so plain cudaMemcpy calls (Tensor::copy_from) order
// themselves after the kernels queued on it.
#include <mutex>

#include "core/allocator.h"
#include "ops/cuda/cuda_context.h"

namespace qtune {
namespace cuda {

void throw_cuda(const char* call, cudaError_t e, const char* file, int line) {
  cudaGetLastError();  // clear a sticky launch error so later calls report their own
  throw_error(ErrorKind::Cuda, "CUDA call ", call, " failed at ", file, ":", line, ": ", cudaGetErrorName(e),
              " (", cudaGetErrorString(e), ")");
}

void throw_cublas(const char* call, int status, const char* file, int line) {
  throw_error(ErrorKind::Cuda, "cuBLAS call ", call, " failed at ", file, ":", line, ": status ", status,
              " (", cublasLtGetStatusName((cublasStatus_t)status), ")");
}

CudaContext& context() {
  static CudaContext* ctx = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    auto* c = new CudaContext();
    int n = 0;
    QT_CUDA_CHECK(cudaGetDeviceCount(&n));
    if (n == 0) throw_error(ErrorKind::Cuda, "no CUDA device found");
    QT_CUDA_CHECK(cudaGetDevice(&c->device));
    cudaDeviceProp prop;
    QT_CUDA_CHECK(cudaGetDeviceProperties(&prop, c->device));
    c->num_sms = prop.multiProcessorCount;
    c->max_smem_optin = prop.sharedMemPerBlockOptin;
    QT_CUDA_CHECK(cudaStreamCreate(&c->stream));
    QT_CUBLAS_CHECK(cublasLtCreate(&c->lt));
    c->workspace_bytes = 32u << 20;  // cuBLASLt's recommendation for Hopper
    c->workspace = device_malloc(c->workspace_bytes);
    ctx = c;
  });
  if (!ctx) throw_error(ErrorKind::Cuda, "the CUDA context failed to initialise earlier");
  return *ctx;
}

void synchronize() {
  QT_CUDA_CHECK(cudaStreamSynchronize(context().stream));
}

int checked_int(int64_t n, const char* op) {
  if (n < 0 || n > 0x7fffffff)
    throw_error(ErrorKind::Shape, op, ": size ", n, " does not fit a 32-bit index");
  return (int)n;
}

void require_cuda(const Tensor& t, const char* op, const char* name) {
  if (!t.defined()) throw_error(ErrorKind::Shape, op, ": tensor ", name, " is undefined");
  if (!t.is_cuda())
    throw_error(ErrorKind::Shape, op, ": tensor ", name, " must be on cuda, got ", t.describe());
}

void require_dtype(const Tensor& t, const char* op, const char* name, DType a, DType b, DType c) {
  DType d = t.dtype();
  if (d == a || (b != DType::BOOL && d == b) || (c != DType::BOOL && d == c)) return;
  throw_error(ErrorKind::Unsupported, op, ": tensor ", name, " has unsupported dtype ", t.describe(),
              " (expected ", dtype_name(a), b != DType::BOOL ? " or " : "",
              b != DType::BOOL ? dtype_name(b) : "", c != DType::BOOL ? " or " : "",
              c != DType::BOOL ? dtype_name(c) : "", ")");
}

}  // namespace cuda
}  // namespace qtune
