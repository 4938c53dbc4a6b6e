// LLM.int8 kernels (rules in quant_cuda.h and int8.h): row-wise int8 quantization with outlier flags, the
// ordered list of outlier columns, the gathered outlier weight columns, the epilogue that turns int32
// products into the output, and a __dp4a GEMV for a few rows. The epilogue follows the CPU forward
// (model/quant_linear.cpp) operation by operation, so given the same int32 products it produces the same
// f32 value before the final rounding to the output dtype:
//   acc' = acc − Σ_j qa[m, c_j] · qb[o, c_j]          (exact: the GEMM also multiplied the outlier columns)
//   v = ((float)acc' · (sa[m] · sb[o])) · 6.200124e-05;  v += bias[o];  v += x[m, c_j] · wout[j, o] for each
//   j
#include <algorithm>

#include "quant/cuda/quant_device.cuh"

namespace qtune {

using namespace quant_cuda;

namespace {

constexpr int kThreads = 256;
constexpr float kInv127 = 7.874015718698502e-3f;
constexpr float kInv127Sq = 6.200124e-05f;

__device__ __forceinline__ float block_max(float a, float* smem) {
  for (int o = 16; o > 0; o >>= 1) a = cpu_max(a, __shfl_xor_sync(0xffffffffu, a, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  if (lane == 0) smem[warp] = a;
  __syncthreads();
  float r = 0.0f;
  for (int w = 0; w < nw; w++) r = cpu_max(r, smem[w]);
  return r;
}

// One block per row: the max over elements below the threshold, flags of outlier columns, then codes.
// 16-bit inputs with cols % 8 == 0 go 8 values per 16-byte load and 8 codes per 8-byte store.
template <class T>
__device__ __forceinline__ float half_word(uint32_t w, int hi);
template <>
__device__ __forceinline__ float half_word<__nv_bfloat16>(uint32_t w, int hi) {
  return __uint_as_float(hi ? (w & 0xFFFF0000u) : (w << 16));
}
template <>
__device__ __forceinline__ float half_word<__half>(uint32_t w, int hi) {
  return __half2float(__ushort_as_half((unsigned short)(hi ? (w >> 16) : (w & 0xFFFFu))));
}
template <>
__device__ __forceinline__ float half_word<float>(uint32_t, int) {
  return 0.0f;  // unused: f32 rows take the scalar path
}

// vec: 16-bit T, cols % 8 == 0, x 16-byte and q 8-byte aligned.
template <class T>
__global__ void quant_rows_kernel(const T* __restrict__ x, int64_t cols, float thr, bool round_f16,
                                  int8_t* __restrict__ q, float* __restrict__ scale,
                                  uint8_t* __restrict__ flags, bool vec) {
  __shared__ float smem[32];
  const T* xr = x + (int64_t)blockIdx.x * cols;
  int8_t* qr = q + (int64_t)blockIdx.x * cols;
  auto rnd = [&](float v) { return round_f16 ? __half2float(__float2half_rn(v)) : v; };
  auto value = [&](T raw) { return rnd(load_f32(raw)); };
  // the 8 values of a 16-byte load
  auto unpack = [&](const uint4& u, float(&v)[8]) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = rnd(half_word<T>(w[i / 2], i % 2));
  };
  float a = 0.0f;
  auto scan = [&](float v, int64_t c) {
    const float f = fabsf(v);
    if (thr > 0.0f && f >= thr)
      flags[c] = 1;
    else
      a = cpu_max(a, f);
  };
  // A row of up to kHeld · 8 · blockDim.x values stays in registers between the two passes.
  constexpr int kHeld = 4;
  uint4 held[kHeld];
  const int64_t step = (int64_t)blockDim.x * 8;
  const bool hold = vec && cols <= kHeld * step;
  if (hold) {
#pragma unroll
    for (int k = 0; k < kHeld; k++) {
      const int64_t c = threadIdx.x * 8 + k * step;
      if (c < cols) held[k] = __ldg(reinterpret_cast<const uint4*>(xr + c));
    }
#pragma unroll
    for (int k = 0; k < kHeld; k++) {
      const int64_t c = threadIdx.x * 8 + k * step;
      if (c >= cols) break;
      float v[8];
      unpack(held[k], v);
#pragma unroll
      for (int i = 0; i < 8; i++) scan(v[i], c + i);
    }
  } else if (vec) {
    for (int64_t c = threadIdx.x * 8; c < cols; c += step) {
      float v[8];
      unpack(__ldg(reinterpret_cast<const uint4*>(xr + c)), v);
#pragma unroll
      for (int i = 0; i < 8; i++) scan(v[i], c + i);
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) scan(value(xr[c]), c);
  }
  a = block_max(a, smem);
  if (threadIdx.x == 0) scale[blockIdx.x] = a;
  const float s = __fmul_rn(__fdiv_rn(1.0f, a), 127.0f);
  auto code = [&](float v) {
    const int r = a == 0.0f ? 0 : __float2int_rn(__fmul_rn(v, s));  // round half to even
    return (int8_t)max(-127, min(127, r));
  };
  if (vec) {
    for (int64_t c = threadIdx.x * 8, k = 0; c < cols; c += step, k++) {
      float v[8];
      uint4 u;
      if (hold) {  // registers indexed by a loop counter: select, so they stay registers
        u = held[0];
#pragma unroll
        for (int h = 1; h < kHeld; h++)
          if (k == h) u = held[h];
      } else {
        u = __ldg(reinterpret_cast<const uint4*>(xr + c));
      }
      unpack(u, v);
      char4 lo, hi;
      lo.x = code(v[0]);
      lo.y = code(v[1]);
      lo.z = code(v[2]);
      lo.w = code(v[3]);
      hi.x = code(v[4]);
      hi.y = code(v[5]);
      hi.z = code(v[6]);
      hi.w = code(v[7]);
      *reinterpret_cast<uint2*>(qr + c) =
          make_uint2(*reinterpret_cast<uint32_t*>(&lo), *reinterpret_cast<uint32_t*>(&hi));
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) qr[c] = code(value(xr[c]));
  }
}

// One block: cols[] = the flagged indices in ascending order, *count = how many.
__global__ void outlier_columns_kernel(const uint8_t* __restrict__ flags, int64_t K,
                                       int32_t* __restrict__ cols, int32_t* __restrict__ count) {
  __shared__ int warp_base[32];
  __shared__ int total;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  int base = 0;
  for (int64_t start = 0; start < K; start += blockDim.x) {
    const int64_t i = start + threadIdx.x;
    const bool f = i < K && flags[i];
    const unsigned m = __ballot_sync(0xffffffffu, f);
    if (lane == 0) warp_base[warp] = __popc(m);
    __syncthreads();
    if (threadIdx.x == 0) {
      int run = 0;
      for (int w = 0; w < nw; w++) {
        const int c = warp_base[w];
        warp_base[w] = run;
        run += c;
      }
      total = run;
    }
    __syncthreads();
    if (f) cols[base + warp_base[warp] + __popc(m & ((1u << lane) - 1))] = (int32_t)i;
    base += total;
    __syncthreads();
  }
  if (threadIdx.x == 0) *count = base;
}

__global__ void gather_outliers_kernel(const Int8Epilogue e, float* __restrict__ wout,
                                       int8_t* __restrict__ qout, int cap) {
  const int j = blockIdx.y;
  if (j >= min(*e.count, cap)) return;
  const int64_t c = e.cols[j];
  for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < e.O;
       o += (int64_t)gridDim.x * blockDim.x) {
    const int8_t qv = e.qb[o * e.K + c];
    qout[j * e.O + o] = qv;
    wout[j * e.O + o] = __fmul_rn(__fmul_rn((float)qv, e.sb[o]), kInv127);
  }
}

// The output value of (m, o) from its int32 product over all K columns (see the file comment).
__device__ __forceinline__ float finish(int32_t acc, int64_t m, int64_t o, const Int8Epilogue& e, int n_out,
                                        int x_kind, int bias_kind) {
  for (int j = 0; j < n_out; j++) {
    const int64_t c = e.cols[j];
    const int qo = j < e.cap ? e.qout[j * e.O + o] : e.qb[o * e.K + c];
    acc -= (int32_t)e.qa[m * e.K + c] * qo;
  }
  float v = __fmul_rn(__fmul_rn((float)acc, __fmul_rn(e.sa[m], e.sb[o])), kInv127Sq);
  if (e.bias) v = __fadd_rn(v, load_kind(e.bias, o, bias_kind));
  for (int j = 0; j < n_out; j++) {
    const int64_t c = e.cols[j];
    const float w =
        j < e.cap ? e.wout[j * e.O + o] : __fmul_rn(__fmul_rn((float)e.qb[o * e.K + c], e.sb[o]), kInv127);
    v = __fadd_rn(v, __fmul_rn(load_kind(e.x, m * e.K + c, x_kind), w));
  }
  return v;
}

// Grid: x over groups of 4 output columns per thread (grid-stride), y over groups of kEpiRows rows. A
// thread issues the loads of its int32 products for all kEpiRows rows first; the rows' outlier data (qa and
// x at the outlier columns) is staged in shared memory meanwhile, and the gathered weight columns are read
// 4 outputs at a time, so the outlier terms are coalesced loads without a dependent chain.
constexpr int kMaxStaged = 64;  // >= the gather cap the forward uses
constexpr int kEpiRows = 4;

__global__ void epilogue_kernel(const int32_t* __restrict__ acc, const Int8Epilogue e, int x_kind,
                                int bias_kind, int out_kind) {
  __shared__ int s_qa[kEpiRows][kMaxStaged];
  __shared__ float s_x[kEpiRows][kMaxStaged];
  const int64_t m0 = (int64_t)blockIdx.y * kEpiRows;
  const int rows = (int)(e.N - m0 < kEpiRows ? e.N - m0 : kEpiRows);
  const int64_t o_first = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
  const bool vec = e.O % 4 == 0;
  int4 a4[kEpiRows];
  if (vec && o_first < e.O)
#pragma unroll
    for (int r = 0; r < kEpiRows; r++)
      if (r < rows) a4[r] = __ldcs(reinterpret_cast<const int4*>(acc + (m0 + r) * e.O + o_first));
  const int n_out = *e.count, n_fast = min(n_out, min(e.cap, kMaxStaged));
  if (n_fast > 0) {
    for (int idx = threadIdx.x; idx < rows * n_fast; idx += blockDim.x) {
      const int r = idx / n_fast, j = idx - r * n_fast;
      const int64_t c = e.cols[j];
      s_qa[r][j] = e.qa[(m0 + r) * e.K + c];
      s_x[r][j] = load_kind(e.x, (m0 + r) * e.K + c, x_kind);
    }
    __syncthreads();
  }
  for (int64_t o = o_first; o < e.O; o += (int64_t)gridDim.x * blockDim.x * 4) {
    if (!vec) {
      for (int r = 0; r < rows; r++)
        for (int64_t k = o; k < min(o + 4, e.O); k++)
          store_kind(e.out, (m0 + r) * e.O + k, out_kind,
                     finish(acc[(m0 + r) * e.O + k], m0 + r, k, e, n_out, x_kind, bias_kind));
      continue;
    }
    if (o != o_first)
#pragma unroll
      for (int r = 0; r < kEpiRows; r++)
        if (r < rows) a4[r] = __ldcs(reinterpret_cast<const int4*>(acc + (m0 + r) * e.O + o));
    const float4 sb = *reinterpret_cast<const float4*>(e.sb + o);
    float bias[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (e.bias)
#pragma unroll
      for (int k = 0; k < 4; k++) bias[k] = load_kind(e.bias, o + k, bias_kind);
#pragma unroll
    for (int r = 0; r < kEpiRows; r++) {
      if (r >= rows) break;
      const int64_t m = m0 + r;
      int32_t a[4] = {a4[r].x, a4[r].y, a4[r].z, a4[r].w};
#pragma unroll 4
      for (int j = 0; j < n_fast; j++) {
        const char4 q = *reinterpret_cast<const char4*>(e.qout + j * e.O + o);
        a[0] -= s_qa[r][j] * q.x;
        a[1] -= s_qa[r][j] * q.y;
        a[2] -= s_qa[r][j] * q.z;
        a[3] -= s_qa[r][j] * q.w;
      }
      const float sbk[4] = {sb.x, sb.y, sb.z, sb.w};
      float v[4];
#pragma unroll
      for (int k = 0; k < 4; k++) {
        for (int j = n_fast; j < n_out; j++) {  // beyond the gathered columns: read in place
          const int64_t c = e.cols[j];
          a[k] -= (int32_t)e.qa[m * e.K + c] * (int32_t)e.qb[(o + k) * e.K + c];
        }
        v[k] = __fmul_rn(__fmul_rn((float)a[k], __fmul_rn(e.sa[m], sbk[k])), kInv127Sq);
        if (e.bias) v[k] = __fadd_rn(v[k], bias[k]);
      }
#pragma unroll 4
      for (int j = 0; j < n_fast; j++) {
        const float4 w = *reinterpret_cast<const float4*>(e.wout + j * e.O + o);
        v[0] = __fadd_rn(v[0], __fmul_rn(s_x[r][j], w.x));
        v[1] = __fadd_rn(v[1], __fmul_rn(s_x[r][j], w.y));
        v[2] = __fadd_rn(v[2], __fmul_rn(s_x[r][j], w.z));
        v[3] = __fadd_rn(v[3], __fmul_rn(s_x[r][j], w.w));
      }
#pragma unroll
      for (int k = 0; k < 4; k++)
        for (int j = n_fast; j < n_out; j++) {
          const int64_t c = e.cols[j];
          const float w = __fmul_rn(__fmul_rn((float)e.qb[(o + k) * e.K + c], sbk[k]), kInv127);
          v[k] = __fadd_rn(v[k], __fmul_rn(load_kind(e.x, m * e.K + c, x_kind), w));
        }
      if (out_kind == 1) {
        __nv_bfloat162 p0 = __floats2bfloat162_rn(v[0], v[1]), p1 = __floats2bfloat162_rn(v[2], v[3]);
        uint2 u = make_uint2(*reinterpret_cast<uint32_t*>(&p0), *reinterpret_cast<uint32_t*>(&p1));
        __stcs(reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(e.out) + m * e.O + o), u);
      } else {
        for (int k = 0; k < 4; k++) store_kind(e.out, m * e.O + o + k, out_kind, v[k]);
      }
    }
  }
}

// One warp per output column o, rows [m0, m0 + ROWS): int32 dot products with __dp4a (16-byte loads when
// K % 16 == 0), a warp sum, then finish().
template <int ROWS>
__global__ void int8_gemv_kernel(const Int8Epilogue e, int64_t m0, int x_kind, int bias_kind, int out_kind) {
  const int64_t o = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (o >= e.O) return;
  const int8_t* w = e.qb + o * e.K;
  int32_t acc[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; r++) acc[r] = 0;
  if (e.K % 16 == 0) {
    const int4* wv = reinterpret_cast<const int4*>(w);
    for (int64_t k = lane; k < e.K / 16; k += 32) {
      const int4 b = __ldcs(wv + k);
#pragma unroll
      for (int r = 0; r < ROWS; r++) {
        const int4 a = __ldg(reinterpret_cast<const int4*>(e.qa + (m0 + r) * e.K) + k);
        acc[r] = __dp4a(a.x, b.x, acc[r]);
        acc[r] = __dp4a(a.y, b.y, acc[r]);
        acc[r] = __dp4a(a.z, b.z, acc[r]);
        acc[r] = __dp4a(a.w, b.w, acc[r]);
      }
    }
  } else {
    for (int64_t k = lane; k < e.K; k += 32) {
      const int b = w[k];
#pragma unroll
      for (int r = 0; r < ROWS; r++) acc[r] += (int32_t)e.qa[(m0 + r) * e.K + k] * b;
    }
  }
  const int n_out = *e.count;
#pragma unroll
  for (int r = 0; r < ROWS; r++) {
    int32_t s = acc[r];
    for (int d = 16; d > 0; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
    if (lane == 0)
      store_kind(e.out, (m0 + r) * e.O + o, out_kind, finish(s, m0 + r, o, e, n_out, x_kind, bias_kind));
  }
}

__global__ void dequant_rows_kernel(const int8_t* __restrict__ q, const float* __restrict__ scale, int64_t r0,
                                    int64_t rows, int64_t cols, void* out, int out_kind) {
  const int64_t n = rows * cols;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = r0 + i / cols;
    store_kind(out, i, out_kind, __fmul_rn(__fmul_rn((float)q[r0 * cols + i], scale[r]), kInv127));
  }
}

}  // namespace

void int8_dequantize_rows_cuda_raw(const int8_t* q, const float* scale, int64_t r0, int64_t rows,
                                   int64_t cols, DType out_dtype, void* out, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const int ok = float_kind(out_dtype, "int8_dequantize_rows_cuda");
  dequant_rows_kernel<<<grid_blocks(rows * cols, kThreads), kThreads, 0, stream>>>(q, scale, r0, rows, cols,
                                                                                   out, ok);
  check_launch("dequant_rows_kernel");
}

void int8_quant_rows_cuda(const void* x, DType dtype, int64_t rows, int64_t cols, float threshold,
                          bool round_f16, int8_t* q, float* scale, uint8_t* col_flags, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  if (rows > 0x7fffffff) throw_error(ErrorKind::Usage, "int8_quant_rows_cuda: too many rows (", rows, ")");
  if (threshold > 0.0f && !col_flags)
    throw_error(ErrorKind::Usage, "int8_quant_rows_cuda: a threshold needs the column flags buffer");
  const bool vec = dtype != DType::F32 && cols % 8 == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0 &&
                   (reinterpret_cast<uintptr_t>(q) & 7) == 0;
  QT_QUANT_DISPATCH(dtype, "int8_quant_rows_cuda", T, {
    quant_rows_kernel<T><<<(int)rows, kThreads, 0, stream>>>(static_cast<const T*>(x), cols, threshold,
                                                             round_f16, q, scale, col_flags, vec);
  });
  check_launch("quant_rows_kernel");
}

void int8_outlier_columns_cuda(const uint8_t* col_flags, int64_t K, int32_t* cols, int32_t* count,
                               cudaStream_t stream) {
  outlier_columns_kernel<<<1, 1024, 0, stream>>>(col_flags, K, cols, count);
  check_launch("outlier_columns_kernel");
}

void int8_gather_outliers_cuda(const Int8Epilogue& e, float* wout, int8_t* qout, int cap,
                               cudaStream_t stream) {
  if (cap <= 0 || e.O <= 0) return;
  dim3 grid((unsigned)std::min<int64_t>((e.O + kThreads - 1) / kThreads, 64), (unsigned)cap);
  gather_outliers_kernel<<<grid, kThreads, 0, stream>>>(e, wout, qout, cap);
  check_launch("gather_outliers_kernel");
}

void int8_epilogue_cuda(const int32_t* acc, const Int8Epilogue& e, cudaStream_t stream) {
  if (e.N <= 0 || e.O <= 0) return;
  const int xk = float_kind(e.x_dtype, "int8_epilogue_cuda (x)"), ok = float_kind(e.out_dtype, "int8 (out)");
  const int bk = e.bias ? float_kind(e.bias_dtype, "int8_epilogue_cuda (bias)") : 0;
  const int64_t gx = std::min<int64_t>((e.O + 4 * kThreads - 1) / (4 * kThreads), 64);
  const int64_t max_rows = (int64_t)65535 * kEpiRows;  // grid.y limit: launch row slices beyond it
  const size_t xs = dtype_nbytes(e.x_dtype, 1), os = dtype_nbytes(e.out_dtype, 1);
  for (int64_t m0 = 0; m0 < e.N; m0 += max_rows) {
    Int8Epilogue s = e;
    s.N = std::min(max_rows, e.N - m0);
    s.sa = e.sa + m0;
    s.qa = e.qa + m0 * e.K;
    s.x = static_cast<const char*>(e.x) + m0 * e.K * xs;
    s.out = static_cast<char*>(e.out) + m0 * e.O * os;
    const dim3 grid((unsigned)gx, (unsigned)((s.N + kEpiRows - 1) / kEpiRows));
    epilogue_kernel<<<grid, kThreads, 0, stream>>>(acc + m0 * e.O, s, xk, bk, ok);
  }
  check_launch("epilogue_kernel");
}

void int8_gemv_cuda(const Int8Epilogue& e, int64_t m0, int rows, cudaStream_t stream) {
  if (rows < 1 || rows > 4) throw_error(ErrorKind::Usage, "int8_gemv_cuda: rows must be 1 to 4, got ", rows);
  if (e.O <= 0) return;
  const int xk = float_kind(e.x_dtype, "int8_gemv_cuda (x)"), ok = float_kind(e.out_dtype, "int8 (out)");
  const int bk = e.bias ? float_kind(e.bias_dtype, "int8_gemv_cuda (bias)") : 0;
  const int blocks = (int)((e.O * 32 + kThreads - 1) / kThreads);
  switch (rows) {
    case 1:
      int8_gemv_kernel<1><<<blocks, kThreads, 0, stream>>>(e, m0, xk, bk, ok);
      break;
    case 2:
      int8_gemv_kernel<2><<<blocks, kThreads, 0, stream>>>(e, m0, xk, bk, ok);
      break;
    case 3:
      int8_gemv_kernel<3><<<blocks, kThreads, 0, stream>>>(e, m0, xk, bk, ok);
      break;
    default:
      int8_gemv_kernel<4><<<blocks, kThreads, 0, stream>>>(e, m0, xk, bk, ok);
  }
  check_launch("int8_gemv_kernel");
}

}  // namespace qtune
