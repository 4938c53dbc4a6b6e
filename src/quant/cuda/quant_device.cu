// Host side of quant_device.cuh: the 4-bit code book argument, rounding kinds, grid sizes, launch checks.
#include <algorithm>

#include "quant/cuda/quant_device.cuh"

namespace qtune {
namespace quant_cuda {

Code4 make_code4(QuantType qt) {
  Code4 c;
  std::copy(code4(qt), code4(qt) + 16, c.code);
  if (qt == QuantType::FP4) c.code[8] = -0.0f;  // bitsandbytes' CUDA dequantize: sign bit times 0 (CPU: +0)
  return c;
}

int round_kind(DType dt) {
  return dt == DType::BF16 ? 1 : dt == DType::F16 ? 2 : 0;
}

int float_kind(DType dt, const char* what) {
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16)
    throw_error(ErrorKind::Usage, what, ": dtype ", dtype_name(dt), " is not supported (F32, BF16 or F16)");
  return round_kind(dt);
}

int grid_blocks(int64_t work, int threads) {
  static int sms = [] {
    int dev = 0, n = 0;
    cudaGetDevice(&dev);
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) n = 132;
    return n;
  }();
  int64_t blocks = (work + threads - 1) / threads;
  return (int)std::max<int64_t>(1, std::min<int64_t>(blocks, (int64_t)sms * 16));
}

void check_launch(const char* kernel) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw_error(ErrorKind::Cuda, "CUDA kernel ", kernel, " failed to launch: ", cudaGetErrorString(e));
}

void device_sm_shape(int* sms, int* threads_per_sm) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, dev);
  if (e != cudaSuccess)
    throw_error(ErrorKind::Cuda, "reading the GPU's SM count failed: ", cudaGetErrorString(e));
}

}  // namespace quant_cuda
}  // namespace qtune
