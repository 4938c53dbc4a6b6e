// The CUDA context shared by the kernels: one stream, a cuBLASLt handle and its workspace (from the
// caching allocator), the device's properties; and the error-checking macros that turn a failed CUDA or
// cuBLAS call into qtune::Error(ErrorKind::Cuda) naming the call and file:line. Internal to ops/cuda.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "core/error.h"
#include "core/tensor.h"

namespace qtune {
namespace cuda {

struct CudaContext {
  int device = 0;
  int num_sms = 0;
  size_t max_smem_optin = 0;  // shared memory a block may opt into (bytes)
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;  // cuBLASLt workspace
  size_t workspace_bytes = 0;
};

// Created on first use (throws ErrorKind::Cuda when there is no usable GPU).
CudaContext& context();
inline cudaStream_t stream() {
  return context().stream;
}
// Waits for all work queued on the context's stream.
void synchronize();

[[noreturn]] void throw_cuda(const char* call, cudaError_t e, const char* file, int line);
[[noreturn]] void throw_cublas(const char* call, int status, const char* file, int line);

// The element count as an int, or a Shape error naming the op when it does not fit.
int checked_int(int64_t n, const char* op);
// Throws Shape/Unsupported errors naming op and the tensor when t is not on the GPU / has the wrong dtype.
void require_cuda(const Tensor& t, const char* op, const char* name);
void require_dtype(const Tensor& t, const char* op, const char* name, DType a, DType b = DType::BOOL,
                   DType c = DType::BOOL);

}  // namespace cuda
}  // namespace qtune

#define QT_CUDA_CHECK(call)                                                                \
  do {                                                                                     \
    cudaError_t qt_e_ = (call);                                                            \
    if (qt_e_ != cudaSuccess) ::qtune::cuda::throw_cuda(#call, qt_e_, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: a bad launch configuration surfaces here, with the kernel's name.
#define QT_CUDA_CHECK_LAUNCH(name)                                                        \
  do {                                                                                    \
    cudaError_t qt_e_ = cudaGetLastError();                                               \
    if (qt_e_ != cudaSuccess) ::qtune::cuda::throw_cuda(name, qt_e_, __FILE__, __LINE__); \
  } while (0)

#define QT_CUBLAS_CHECK(call)                                                                               \
  do {                                                                                                      \
    cublasStatus_t qt_s_ = (call);                                                                          \
    if (qt_s_ != CUBLAS_STATUS_SUCCESS) ::qtune::cuda::throw_cublas(#call, (int)qt_s_, __FILE__, __LINE__); \
  } while (0)
