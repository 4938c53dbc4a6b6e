// Host side of quant_device.cuh: the 4-bit code book argument, rounding kinds, grid sizes, launch checks.
#include <algorithm>
#include <numeric>

#include "quant/cuda/quant_device.cuh"

namespace qtune {
namespace quant_cuda {

Code4 make_code4(QuantType qt) {
  Code4 c;
  const float* v = code4(qt);
  int idx[16];
  std::iota(idx, idx + 16, 0);
  std::stable_sort(idx, idx + 16, [&](int a, int b) { return v[a] < v[b]; });  // FP4's zeros keep 0, 8
  for (int i = 0; i < 16; i++) {
    c.code[i] = v[i];
    c.order[i] = (uint8_t)idx[i];
  }
  for (int i = 0; i < 15; i++) c.mids[i] = (v[idx[i]] + v[idx[i + 1]]) / 2.0f;
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

}  // namespace quant_cuda
}  // namespace qtune
