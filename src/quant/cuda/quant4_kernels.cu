// 4-bit NF4 / FP4 blockwise quantize and dequantize on the GPU. quantize writes what bitsandbytes' CUDA
// kernels write, bit for bit (rules in bnb_cuda_rules.h; tests against its goldens in quant_cuda_test), as
// the CPU functions of quant4.h write what its CPU path writes. dequantize: code[q] · absmax (f32), optional
// rounding steps, the output dtype, as bitsandbytes' CUDA kernel (its fast math flushes a subnormal product
// to zero; otherwise equal to quant4.cpp's, bit for bit). dequantize: code[q] · absmax (f32),
// optional rounding steps, the output dtype. Aligned ranges: each lane
//   turns one 32-bit word of codes (8 elements, inside one block) into one 16-byte store of bf16/f16, so a
//   warp's loads and stores are both contiguous; eight words per lane in flight. Other ranges and the tail:
//   one thread per 32 elements, element by element. (A first version with one thread per 32 elements and
//   four 16-byte stores each reached 37-45% of copy bandwidth: a warp's stores were 64 bytes apart.)
#include <algorithm>
#include <cfloat>
#include <cstring>

#include "quant/bnb_cuda_rules.h"
#include "quant/cuda/quant_device.cuh"
#include "quant/double_quant.h"

namespace qtune {

using namespace quant_cuda;

namespace {

constexpr int kThreads = 256;

// One warp per quantization block, bitsandbytes' CUDA rules (bnb_cuda_rules.h): absmax = max ftz(|x|) from
// -FLT_MAX (0 for a partial block, whose zero padding counts), inv = the approximate reciprocal, then each
// lane packs pairs of elements (element 2i in the high nibble; an odd count pads with the code of 0 · inv).
template <class T>
__global__ void quantize4_kernel(const T* __restrict__ x, int64_t n, int64_t bs, QuantType qt,
                                 uint8_t* __restrict__ packed, float* __restrict__ absmax) {
  const int lane = threadIdx.x & 31;
  const int64_t nb = (n + bs - 1) / bs;
  const int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t b = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; b < nb; b += nwarps) {
    const int64_t start = b * bs, len = min(n, start + bs) - start;
    const T* xb = x + start;
    float a = len < bs ? 0.0f : -FLT_MAX;
    for (int64_t i = lane; i < len; i += 32) a = bnb_absmax_step(a, load_f32(xb[i]));  // NaN ignored
    for (int o = 16; o > 0; o >>= 1) a = bnb_max(a, __shfl_xor_sync(0xffffffffu, a, o));
    if (lane == 0) absmax[b] = a;
    const float inv = bnb_reciprocal(a);
    const int64_t npairs = (len + 1) / 2;
    for (int64_t p = lane; p < npairs; p += 32) {
      const int64_t i0 = 2 * p, i1 = i0 + 1;
      const float v0 = bnb_scaled(load_f32(xb[i0]), inv);
      const float v1 = bnb_scaled(i1 < len ? load_f32(xb[i1]) : 0.0f, inv);
      packed[start / 2 + p] = (uint8_t)((bnb_cuda_code4(qt, v0) << 4) | bnb_cuda_code4(qt, v1));
    }
  }
}

// Two values rounded to a 16-bit type, packed as one 32-bit word (the first in the low half).
template <class TO>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}

template <class TO>
__device__ __forceinline__ TO from_f32_rn(float v);
template <>
__device__ __forceinline__ float from_f32_rn<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32_rn<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_f32_rn<__half>(float v) {
  return __float2half_rn(v);
}

// Elements [e0, e0 + count) into out[0 .. count), one thread per 32-element chunk, element by element.
template <class TO>
__global__ void dequantize4_kernel(const uint8_t* __restrict__ packed, Absmax4View am, int64_t e0,
                                   int64_t count, int lg_bs, Code4 cs, TO* __restrict__ out, int r1, int r2) {
  __shared__ float code[16];
  __shared__ float ncode[256];
  if (threadIdx.x < 16) code[threadIdx.x] = cs.code[threadIdx.x];
  if (!am.absmax)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) ncode[i] = am.nested_code[i];
  __syncthreads();
  const int64_t e_end = e0 + count, c_first = e0 >> 5, c_last = (e_end - 1) >> 5;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  auto value = [&](int nib, float s) {
    float v = bnb_scaled(code[nib], s);
    return round_step(r2, round_step(r1, v));
  };
  for (int64_t k = c_first + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k <= c_last; k += stride) {
    const int64_t eb = k << 5;
    const float s = block_absmax(am, eb >> lg_bs, ncode);
    for (int64_t e = max(eb, e0); e < min(eb + 32, e_end); e++) {
      const uint8_t byte = packed[e >> 1];
      out[e - e0] = from_f32_rn<TO>(value((e & 1) ? (byte & 15) : (byte >> 4), s));
    }
  }
}

constexpr int kWordsPerLane = 8;  // 32-bit code words in flight per lane

// Elements [e0, e0 + 8 · words) into out, e0 % 8 == 0, out 16-byte aligned: word u (8 codes) of the range
// becomes out[8u .. 8u + 8). A warp covers 32 · kWordsPerLane consecutive words, lane-interleaved.
template <class TO, bool kChain>
__global__ void dequantize4_vec_kernel(const uint32_t* __restrict__ words, Absmax4View am, int64_t e0,
                                       int64_t nwords, int lg_bs, Code4 cs, TO* __restrict__ out, int r1,
                                       int r2) {
  __shared__ float code[16];
  __shared__ float ncode[256];
  const int lane = threadIdx.x & 31;
  const int64_t w_first = e0 >> 3;
  const int64_t span = 32 * kWordsPerLane;
  const int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  int64_t base = (((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5) * span;
  uint32_t w[kWordsPerLane];
  float a[kWordsPerLane];
  uint32_t qa[kWordsPerLane];
  auto load = [&](int64_t b) {
#pragma unroll
    for (int k = 0; k < kWordsPerLane; k++) {
      const int64_t u = b + 32 * k + lane;
      if (u < nwords) {
        const int64_t blk = ((e0 + 8 * u) >> lg_bs);
        w[k] = __ldcs(words + w_first + u);
        if (am.absmax) {
          a[k] = __ldg(am.absmax + blk);
        } else {
          qa[k] = am.qabsmax[blk];
          a[k] = __ldg(am.nested_absmax + (blk >> 8));
        }
      }
    }
  };
  if (base < nwords) load(base);
  if (threadIdx.x < 16) code[threadIdx.x] = cs.code[threadIdx.x];
  if (!am.absmax)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) ncode[i] = am.nested_code[i];
  __syncthreads();
  const char* code_bytes = reinterpret_cast<const char*>(code);
  for (; base < nwords; base += nwarps * span) {
#pragma unroll
    for (int k = 0; k < kWordsPerLane; k++) {
      const int64_t u = base + 32 * k + lane;
      if (u >= nwords) break;
      const float s = am.absmax ? a[k] : __fadd_rn(bnb_scaled(ncode[qa[k]], a[k]), am.offset);
      const uint32_t hi = (w[k] >> 2) & 0x3C3C3C3Cu, lo = (w[k] << 2) & 0x3C3C3C3Cu;
      float v[8];
#pragma unroll
      for (int b = 0; b < 4; b++) {
        v[2 * b] =
            bnb_scaled(*reinterpret_cast<const float*>(code_bytes + __byte_perm(hi, 0, 0x4440 | b)), s);
        v[2 * b + 1] =
            bnb_scaled(*reinterpret_cast<const float*>(code_bytes + __byte_perm(lo, 0, 0x4440 | b)), s);
      }
      if (kChain)
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = round_step(r2, round_step(r1, v[i]));
      if constexpr (sizeof(TO) == 2) {
        __stcs(reinterpret_cast<uint4*>(out + 8 * u),
               make_uint4(pack2<TO>(v[0], v[1]), pack2<TO>(v[2], v[3]), pack2<TO>(v[4], v[5]),
                          pack2<TO>(v[6], v[7])));
      } else {
        float4* dst = reinterpret_cast<float4*>(out + 8 * u);
        __stcs(dst, make_float4(v[0], v[1], v[2], v[3]));
        __stcs(dst + 1, make_float4(v[4], v[5], v[6], v[7]));
      }
    }
    if (base + nwarps * span < nwords) load(base + nwarps * span);
  }
}

int log2_exact(int64_t bs) {
  int lg = 0;
  while ((int64_t(1) << lg) < bs) lg++;
  return lg;
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

void require_gpu(const Tensor& t, const char* what, const char* name) {
  if (!t.defined() || !t.is_cuda())
    throw_error(ErrorKind::Usage, what, ": ", name, " must be a GPU tensor, got ",
                t.defined() ? t.describe() : std::string("an undefined tensor"));
}

}  // namespace

Absmax4View absmax4_view(const Quant4Tensor& q) {
  Absmax4View v;
  require_gpu(q.absmax, "absmax4_view", "absmax");
  if (!q.nested) {
    v.absmax = q.absmax.data<float>();
    return v;
  }
  require_gpu(q.nested_absmax, "absmax4_view", "nested_absmax");
  require_gpu(q.nested_code, "absmax4_view", "nested_code");
  v.qabsmax = q.absmax.data<uint8_t>();
  v.nested_absmax = q.nested_absmax.data<float>();
  v.nested_code = q.nested_code.data<float>();
  v.offset = q.offset;
  return v;
}

void quantize_4bit_cuda_raw(const void* x, DType dtype, int64_t n, int64_t blocksize, QuantType qt,
                            uint8_t* packed, float* absmax, cudaStream_t stream) {
  check_blocksize(blocksize, "quantize_4bit_cuda");
  if (n <= 0) return;
  const int64_t nb = (n + blocksize - 1) / blocksize;
  const int blocks = grid_blocks(nb * 32, kThreads);
  QT_QUANT_DISPATCH(dtype, "quantize_4bit_cuda", T, {
    quantize4_kernel<T>
        <<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(x), n, blocksize, qt, packed, absmax);
  });
  check_launch("quantize4_kernel");
}

void dequantize_4bit_cuda_raw(const uint8_t* packed, const Absmax4View& am, int64_t e0, int64_t count,
                              int64_t blocksize, QuantType qt, DType out_dtype, void* out,
                              cudaStream_t stream, DType round1, DType round2) {
  check_blocksize(blocksize, "dequantize_4bit_cuda");
  if (count <= 0) return;
  if (!am.absmax && (!am.qabsmax || !am.nested_absmax || !am.nested_code))
    throw_error(ErrorKind::Usage, "dequantize_4bit_cuda: no absmax (plain or nested) given");
  const Code4 cs = make_code4(qt);
  const int lg = log2_exact(blocksize), r1 = round_kind(round1), r2 = round_kind(round2);
  const bool chain = r1 != 0 || r2 != 0;
  // Whole 8-element words through the vector kernel when the range and pointers line up.
  int64_t done = 0;
  if (e0 % 8 == 0 && (reinterpret_cast<uintptr_t>(packed) & 3) == 0 && aligned16(out)) {
    const int64_t nwords = count / 8;
    if (nwords > 0) {
      // one span of 32 · kWordsPerLane words per warp; the block scheduler balances the rest
      const int64_t spans = (nwords + 32 * kWordsPerLane - 1) / (32 * kWordsPerLane);
      const int blocks = (int)std::min<int64_t>((spans + kThreads / 32 - 1) / (kThreads / 32), 0x7fffffff);
      QT_QUANT_DISPATCH(out_dtype, "dequantize_4bit_cuda", TO, {
        const uint32_t* words = reinterpret_cast<const uint32_t*>(packed);
        if (chain)
          dequantize4_vec_kernel<TO, true>
              <<<blocks, kThreads, 0, stream>>>(words, am, e0, nwords, lg, cs, static_cast<TO*>(out), r1, r2);
        else
          dequantize4_vec_kernel<TO, false>
              <<<blocks, kThreads, 0, stream>>>(words, am, e0, nwords, lg, cs, static_cast<TO*>(out), r1, r2);
      });
      check_launch("dequantize4_vec_kernel");
    }
    done = nwords * 8;
  }
  if (done == count) return;
  const int64_t r0 = e0 + done, rest = count - done;
  const int64_t chunks = ((r0 + rest - 1) >> 5) - (r0 >> 5) + 1;
  const int blocks = grid_blocks(chunks, kThreads);
  QT_QUANT_DISPATCH(out_dtype, "dequantize_4bit_cuda", TO, {
    TO* o = static_cast<TO*>(out) + done;
    dequantize4_kernel<TO><<<blocks, kThreads, 0, stream>>>(packed, am, r0, rest, lg, cs, o, r1, r2);
  });
  check_launch("dequantize4_kernel");
}

Quant4Tensor quantize_4bit_cuda(const Tensor& x, QuantType qt, int64_t blocksize, bool double_quant) {
  require_gpu(x, "quantize_4bit_cuda", "x");
  check_blocksize(blocksize, "quantize_4bit_cuda");
  const int64_t n = x.numel();
  if (n == 0) throw_error(ErrorKind::Usage, "quantize_4bit_cuda: empty tensor ", x.describe());
  Quant4Tensor q;
  q.quant_type = qt;
  q.blocksize = blocksize;
  q.shape = x.shape();
  q.dtype = x.dtype();
  q.packed = Tensor::empty({(n + 1) / 2, 1}, DType::U8, Device::CUDA);
  const int64_t nb = q.num_blocks();
  Tensor absmax = Tensor::empty({nb}, DType::F32, Device::CUDA);
  quantize_4bit_cuda_raw(x.raw(), x.dtype(), n, blocksize, qt, q.packed.data<uint8_t>(), absmax.data<float>(),
                         0);
  if (!double_quant) {
    q.absmax = absmax;
    return q;
  }
  // Double quant as bitsandbytes on CUDA: the offset is torch's CUDA mean (reproduced on the host from the
  // copied absmax, for this device's SM count), then absmax - offset in 8-bit blocks of 256 on the GPU.
  Tensor host = absmax.to(Device::CPU);
  int sms = 0, threads = 0;
  device_sm_shape(&sms, &threads);
  q.nested = true;
  q.offset = torch_cuda_mean_f32(host.data<float>(), nb, sms, threads);
  q.nested_blocksize = kNestedBlocksize;
  q.nested_code = Tensor::from_f32(create_dynamic_map(true), {256}).to(Device::CUDA);
  q.absmax = Tensor::empty({nb}, DType::U8, Device::CUDA);
  q.nested_absmax = Tensor::empty({(nb + kNestedBlocksize - 1) / kNestedBlocksize}, DType::F32, Device::CUDA);
  quantize_blockwise_8bit_cuda_raw(absmax.raw(), DType::F32, nb, q.nested_code.data<float>(),
                                   kNestedBlocksize, q.absmax.data<uint8_t>(), q.nested_absmax.data<float>(),
                                   0, q.offset);
  return q;
}

Tensor dequantize_4bit_cuda(const Quant4Tensor& q, DType out_dtype) {
  validate_quant4(q, "dequantize_4bit_cuda");
  require_gpu(q.packed, "dequantize_4bit_cuda", "packed");
  Tensor out = Tensor::empty(q.shape, out_dtype, Device::CUDA);
  dequantize_4bit_cuda_raw(q.packed.data<uint8_t>(), absmax4_view(q), 0, q.numel(), q.blocksize, q.quant_type,
                           out_dtype, out.raw(), 0);
  return out;
}

Quant4Tensor quant4_to(const Quant4Tensor& q, Device device) {
  Quant4Tensor r = q;
  for (Tensor* t : {&r.packed, &r.absmax, &r.nested_absmax, &r.nested_code})
    if (t->defined()) *t = t->to(device);
  return r;
}

}  // namespace qtune
