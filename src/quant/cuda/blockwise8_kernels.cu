// 8-bit dynamic blockwise quantize / dequantize on the GPU. quantize writes what bitsandbytes' CUDA kernel
// writes, bit for bit (rules in bnb_cuda_rules.h: its 8-bit search, not the CPU path's nearest code), one
// warp per block; dequantize as its CUDA kernel (a subnormal product flushed to zero; otherwise equal to
// blockwise8.cpp's), one thread per element.
#include <cfloat>
#include <type_traits>

#include "quant/bnb_cuda_rules.h"
#include "quant/cuda/quant_device.cuh"

namespace qtune {

using namespace quant_cuda;

namespace {

constexpr int kThreads = 256;

// One warp per block, bitsandbytes' CUDA rules (bnb_cuda_rules.h) on v = x - offset (an exact f32
// subtraction, as torch computes absmax - offset before bitsandbytes' kernel): absmax = max ftz(|v|) from
// -FLT_MAX (0 for a partial block), inv = the approximate reciprocal, then its 8-bit search per value.
template <class T>
__global__ void quantize8_kernel(const T* __restrict__ x, float offset, int64_t n, int64_t bs,
                                 const float* __restrict__ code, uint8_t* __restrict__ q,
                                 float* __restrict__ absmax) {
  __shared__ float c[256];
  for (int j = threadIdx.x; j < 256; j += blockDim.x) c[j] = code[j];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t nb = (n + bs - 1) / bs, nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  auto value = [&](int64_t i) { return __fsub_rn(load_f32(x[i]), offset); };
  for (int64_t b = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; b < nb; b += nwarps) {
    const int64_t start = b * bs, end = min(n, start + bs);
    float a = end - start < bs ? 0.0f : -FLT_MAX;
    for (int64_t i = start + lane; i < end; i += 32) a = bnb_absmax_step(a, value(i));  // NaN ignored
    for (int o = 16; o > 0; o >>= 1) a = bnb_max(a, __shfl_xor_sync(0xffffffffu, a, o));
    if (lane == 0) absmax[b] = a;
    const float inv = bnb_reciprocal(a);
    for (int64_t i = start + lane; i < end; i += 32) q[i] = bnb_cuda_code8(c, bnb_scaled(value(i), inv));
  }
}

template <class TO>
__global__ void dequantize8_kernel(const uint8_t* __restrict__ q, const float* __restrict__ absmax,
                                   const float* __restrict__ code, int64_t n, int lg_bs,
                                   TO* __restrict__ out) {
  __shared__ float c[256];
  for (int j = threadIdx.x; j < 256; j += blockDim.x) c[j] = code[j];
  __syncthreads();
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float v = bnb_scaled(c[q[i]], absmax[i >> lg_bs]);  // flush to zero as bitsandbytes
    if constexpr (sizeof(TO) == 4)
      out[i] = v;
    else if constexpr (std::is_same<TO, __half>::value)
      out[i] = __float2half_rn(v);
    else
      out[i] = __float2bfloat16_rn(v);
  }
}

int log2_of(int64_t bs) {
  int lg = 0;
  while ((int64_t(1) << lg) < bs) lg++;
  return lg;
}

Tensor upload_code(const std::vector<float>& code, const char* what) {
  if (code.size() != 256)
    throw_error(ErrorKind::Usage, what, ": code book has ", code.size(), " values, expected 256");
  for (size_t j = 0; j + 1 < code.size(); j++)
    if (!(code[j] <= code[j + 1]))
      throw_error(ErrorKind::Usage, what, ": code book values must be sorted ascending (index ", j, ")");
  return Tensor::from_f32(code, {256}).to(Device::CUDA);
}

}  // namespace

void quantize_blockwise_8bit_cuda_raw(const void* x, DType dtype, int64_t n, const float* code,
                                      int64_t blocksize, uint8_t* q, float* absmax, cudaStream_t stream,
                                      float offset) {
  check_blocksize(blocksize, "quantize_blockwise_8bit_cuda");
  if (n <= 0) return;
  const int64_t nb = (n + blocksize - 1) / blocksize;
  const int blocks = grid_blocks(nb * 32, kThreads);
  QT_QUANT_DISPATCH(dtype, "quantize_blockwise_8bit_cuda", T, {
    quantize8_kernel<T>
        <<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(x), offset, n, blocksize, code, q, absmax);
  });
  check_launch("quantize8_kernel");
}

void dequantize_blockwise_8bit_cuda_raw(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                                        int64_t blocksize, DType out_dtype, void* out, cudaStream_t stream) {
  check_blocksize(blocksize, "dequantize_blockwise_8bit_cuda");
  if (n <= 0) return;
  const int blocks = grid_blocks(n, kThreads);
  QT_QUANT_DISPATCH(out_dtype, "dequantize_blockwise_8bit_cuda", TO, {
    dequantize8_kernel<TO>
        <<<blocks, kThreads, 0, stream>>>(q, absmax, code, n, log2_of(blocksize), static_cast<TO*>(out));
  });
  check_launch("dequantize8_kernel");
}

Blockwise8 quantize_blockwise_8bit_cuda(const Tensor& x, const std::vector<float>& code, int64_t blocksize) {
  if (!x.defined() || !x.is_cuda())
    throw_error(ErrorKind::Usage, "quantize_blockwise_8bit_cuda: expected a GPU tensor, got ",
                x.defined() ? x.describe() : std::string("an undefined tensor"));
  check_blocksize(blocksize, "quantize_blockwise_8bit_cuda");
  Tensor c = upload_code(code, "quantize_blockwise_8bit_cuda");
  const int64_t n = x.numel();
  Blockwise8 r;
  r.blocksize = blocksize;
  r.q = Tensor::empty(x.shape(), DType::U8, Device::CUDA);
  r.absmax = Tensor::empty({(n + blocksize - 1) / blocksize}, DType::F32, Device::CUDA);
  quantize_blockwise_8bit_cuda_raw(x.raw(), x.dtype(), n, c.data<float>(), blocksize, r.q.data<uint8_t>(),
                                   r.absmax.data<float>(), 0);
  return r;
}

Tensor dequantize_blockwise_8bit_cuda(const Blockwise8& b, const std::vector<float>& code, DType out_dtype) {
  if (!b.q.is_cuda() || !b.absmax.is_cuda() || b.q.dtype() != DType::U8 || b.absmax.dtype() != DType::F32)
    throw_error(ErrorKind::Usage,
                "dequantize_blockwise_8bit_cuda: expected GPU U8 codes and F32 absmax, got ", b.q.describe(),
                " and ", b.absmax.describe());
  const int64_t n = b.q.numel();
  if (b.absmax.numel() != (n + b.blocksize - 1) / b.blocksize)
    throw_error(ErrorKind::Shape, "dequantize_blockwise_8bit_cuda: absmax has ", b.absmax.numel(),
                " values, expected ", (n + b.blocksize - 1) / b.blocksize);
  Tensor c = upload_code(code, "dequantize_blockwise_8bit_cuda");
  Tensor out = Tensor::empty(b.q.shape(), out_dtype, Device::CUDA);
  dequantize_blockwise_8bit_cuda_raw(b.q.data<uint8_t>(), b.absmax.data<float>(), c.data<float>(), n,
                                     b.blocksize, out_dtype, out.raw(), 0);
  return out;
}

}  // namespace qtune
