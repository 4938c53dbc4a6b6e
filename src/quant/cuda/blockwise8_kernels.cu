// 8-bit dynamic blockwise quantize / dequantize on the GPU, bit-exact with blockwise8.cpp (rules in
// blockwise8.h). The CPU looks codes up in a 65536-entry table indexed by the scaled value; entry i is the
// number of code midpoints below -1 + 2i/65535. Here the index is computed with the same f32 steps and
// the entry by a binary search over the 255 midpoints in shared memory, which gives the same count.
// quantize: one warp per block (warp max, then codes); dequantize: one thread per element.
#include <type_traits>

#include "quant/cuda/quant_device.cuh"

namespace qtune {

using namespace quant_cuda;

namespace {

constexpr int kThreads = 256;

// The CPU's Quant8Lut::lookup: clamp, bin index with separate f32 roundings, #midpoints < the bin value.
__device__ __forceinline__ uint8_t lookup8(const float* mids, float v) {
  v = cpu_min(cpu_max(v, -1.0f), 1.0f);
  float t = __fmul_rn(__fadd_rn(v, 1.0f), 0.5f);
  t = __fadd_rn(__fmul_rn(t, 65535.0f), 0.5f);
  const int i = (int)t;  // truncation, as the CPU's (uint16_t) cast; t in [0.5, 65535.5]
  const float val = __fadd_rn(-1.0f, __fdiv_rn(__fmul_rn(2.0f, (float)i), 65535.0f));
  int lo = 0, hi = 255;
  while (lo < hi) {  // first midpoint >= val
    const int mid = (lo + hi) >> 1;
    if (mids[mid] < val)
      lo = mid + 1;
    else
      hi = mid;
  }
  return (uint8_t)lo;
}

template <class T>
__global__ void quantize8_kernel(const T* __restrict__ x, int64_t n, int64_t bs,
                                 const float* __restrict__ code, uint8_t* __restrict__ q,
                                 float* __restrict__ absmax) {
  __shared__ float mids[255];
  for (int j = threadIdx.x; j < 255; j += blockDim.x)
    mids[j] = __fmul_rn(0.5f, __fadd_rn(code[j], code[j + 1]));
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t nb = (n + bs - 1) / bs, nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t b = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; b < nb; b += nwarps) {
    const int64_t start = b * bs, end = min(n, start + bs);
    float a = 0.0f;
    for (int64_t i = start + lane; i < end; i += 32) a = cpu_max(a, fabsf(load_f32(x[i])));  // NaN ignored
    for (int o = 16; o > 0; o >>= 1) a = cpu_max(a, __shfl_xor_sync(0xffffffffu, a, o));
    if (lane == 0) absmax[b] = a;
    const float inv = __fdiv_rn(1.0f, a);
    for (int64_t i = start + lane; i < end; i += 32)
      q[i] = a == 0.0f ? (uint8_t)0 : lookup8(mids, __fmul_rn(load_f32(x[i]), inv));
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
    const float v = __fmul_rn(c[q[i]], absmax[i >> lg_bs]);
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
                                      int64_t blocksize, uint8_t* q, float* absmax, cudaStream_t stream) {
  check_blocksize(blocksize, "quantize_blockwise_8bit_cuda");
  if (n <= 0) return;
  const int64_t nb = (n + blocksize - 1) / blocksize;
  const int blocks = grid_blocks(nb * 32, kThreads);
  QT_QUANT_DISPATCH(dtype, "quantize_blockwise_8bit_cuda", T, {
    quantize8_kernel<T>
        <<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(x), n, blocksize, code, q, absmax);
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
