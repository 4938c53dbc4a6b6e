// LLM.int8 for one row of x in one launch (decode). Every block quantizes the row itself, as
// int8_quant_rows_cuda does (f16(x), the max of |f16(x)| below the threshold, codes rounded half to even),
// and lists its outlier columns in shared memory, while its warps' first weight loads are in flight (they
// are requested before the kernel before has finished: a programmatic dependent launch). Then each warp takes
// one output at a time, two batches of weight loads in flight: the __dp4a dot product of the weight row with
// the codes, in which the outlier columns' codes are 0 (the same int32 as the product over all columns minus
// theirs, which is what the epilogues compute), then int8_epilogue_cuda's arithmetic, the outlier columns'
// f32 terms one fma at a time in column order. So the output equals the three-launch path's (and the CPU
// forward's) bit for bit. Weights that share x (q/k/v, gate/up) share the launch. Before this, decode ran two
// one-block kernels (the row quantization, the outlier listing) before each int8 GEMV: ~13 µs per Linear in
// ncu (bench/NOTES.md, session 17, has what each step gained).
#include <algorithm>

#include "core/cuda_pdl.cuh"
#include "core/row_norm.cuh"
#include "core/silu_mul.cuh"
#include "quant/cuda/quant_device.cuh"

namespace qtune {

using namespace quant_cuda;

namespace {

constexpr int kThreads = 1024, kWarps = kThreads / 32;
constexpr int kLoads = 4;      // 16-byte weight loads per lane and batch; two batches per warp in flight
constexpr int kMaxPieces = 4;  // x pieces of 8 values per thread: rows up to 8 · 4 · 1024 = 32768
constexpr float kInv127 = 7.874015718698502e-3f;
constexpr float kInv127Sq = 6.200124e-05f;

// The 8 values of x at c (c % 8 == 0, 16-byte aligned): a 16-bit x from its piece u, already loaded; f32 x
// loaded here.
__device__ __forceinline__ void load8(const void* x, int kind, const uint4& u, int64_t c, float (&v)[8]) {
  if (kind == 0) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(x) + c);
    const float4 a = __ldg(p), b = __ldg(p + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    return;
  }
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const uint32_t h = i % 2 ? w[i / 2] >> 16 : w[i / 2] & 0xFFFFu;
    v[i] = kind == 1 ? __uint_as_float(h << 16) : __half2float(__ushort_as_half((unsigned short)h));
  }
}

// Shared memory (dynamic, K % 16 == 0): x at the outlier columns (f32 [K], indexed by column), the codes
// (int8 [K]), the outlier bitmap (uint32 [ceil(K / 32)]) and the ascending list of outlier columns (uint16
// [K]).
__host__ __device__ inline int bitmap_words(int64_t K) {
  return (int)((K + 31) / 32);
}
size_t row_smem(int64_t K) {
  return (size_t)K * 4 + (size_t)K + (size_t)bitmap_words(K) * 4 + (size_t)K * 2;
}

// Up to kInt8RowMaxParts weights that share x (q/k/v, gate/up): their outputs are numbered one after the
// other, and each output picks its part's fields with selects (indexing the parameters would copy them to
// local memory).
struct RowPart {
  const int8_t* qb;  // [O, K]
  const float* sb;   // [O]
  const void* bias;  // [O] or null
  void* out;         // [O]
  int end;           // one past its last output in the launch's numbering
};
struct RowParams {
  RowPart part[kInt8RowMaxParts];
  const void* x;
  // The row of x as it enters (quant_cuda.h, Int8RowInput): with norm_w rmsnorm(x + x_add) · norm_w,
  // block 0 writing x + x_add to res_out; with glu_up silu(x) · glu_up.
  const void *x_add, *norm_w, *glu_up;
  void* res_out;
  float norm_eps;
  int K, outputs;
  float thr;
  int x_kind, bias_kind, out_kind;
};

// How the row enters: x itself, the fused norm (p.norm_w), the SwiGLU (p.glu_up).
enum RowIn { kPlain, kNorm, kGlu };

// kPieces: x pieces of 8 values per thread (K <= 8 · kPieces · kThreads).
template <int kPieces, int kIn>
__global__ void __launch_bounds__(kThreads, 1) int8_gemv_row_kernel(const RowParams p) {
  extern __shared__ __align__(16) char smem[];
  const int K = p.K, nv = K / 16;
  float* s_x = reinterpret_cast<float*>(smem);
  int8_t* s_qa = reinterpret_cast<int8_t*>(smem + (size_t)K * 4);
  uint32_t* s_bits = reinterpret_cast<uint32_t*>(smem + (size_t)K * 5);
  const int words = bitmap_words(K);
  uint16_t* s_cols = reinterpret_cast<uint16_t*>(smem + (size_t)K * 5 + words * 4);
  __shared__ float s_max[kWarps];
  __shared__ int s_count;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool use_thr = p.thr > 0.0f;

  // Output g of the launch: its part j and its row in that part.
  auto part_of = [&](int g) { return (g >= p.part[0].end) + (g >= p.part[1].end); };
  auto pick = [&](int j, auto field) {
    return j == 0 ? field(p.part[0]) : j == 1 ? field(p.part[1]) : field(p.part[2]);
  };
  auto row_of = [&](int g, int j) { return g - (j == 0 ? 0 : j == 1 ? p.part[0].end : p.part[1].end); };
  // The warp's outputs are g0, g0 + kWarps, ... of the block's run, each row in batches of kLoads loads
  // per lane; two batches rotate by name (copying one would wait for its loads): one is summed while the
  // other is in flight, then refilled from the load cursor (lg, lb).
  const int per = (p.outputs + gridDim.x - 1) / gridDim.x;
  const int g_end = min(p.outputs, (int)blockIdx.x * per + per);
  const int g0 = (int)blockIdx.x * per + warp;
  struct Batch {
    int4 w[kLoads];
    float sb;  // the row's scale, with its first batch
  };
  Batch ba, bb;
  int lg = g0, lb = 0;
  auto issue = [&](Batch& b) {
    if (lg < g_end) {
      const int j = part_of(lg), o = row_of(lg, j);
      const int4* row =
          reinterpret_cast<const int4*>(pick(j, [](const RowPart& r) { return r.qb; }) + (int64_t)o * K);
#pragma unroll
      for (int u = 0; u < kLoads; u++) {
        const int i = lb + u * 32 + lane;
        b.w[u] = i < nv ? __ldcs(row + i) : make_int4(0, 0, 0, 0);
      }
      if (lb == 0) b.sb = pick(j, [](const RowPart& r) { return r.sb; })[o];
    }
    lb += 32 * kLoads;
    if (lb >= nv) lb = 0, lg += kWarps;
  };
  // A programmatic dependent launch: the next kernel may launch as this one's blocks leave their SMs, and
  // this one's first weights (written once, at load: no kernel that may still run writes them) are
  // requested while the kernel before finishes (8-bit decode 3.61-3.71 -> 3.35-3.40 ms against x first,
  // bench/NOTES.md, session 17).
  cuda::pdl_trigger();
  issue(ba);
  issue(bb);
  cuda::pdl_wait();
  // Then x, which the kernel before writes (a 16-bit x into registers now; an f32 x in the first pass).
  // Thread t takes the pieces t, t + stride, ... (with the norm, add_rmsnorm's threads and order).
  const int pieces = K / 8, stride = kIn == kNorm ? rmsnorm_threads(K) : kThreads;
  auto piece = [&](int k) { return (int)threadIdx.x < stride ? (int)threadIdx.x + k * stride : pieces; };
  // x's pieces (then f16 of the row in pairs, for the codes); x_add's or glu_up's
  uint4 xr[kPieces], ar[kIn != kPlain ? kPieces : 1];
  const void* second = kIn == kNorm ? p.x_add : p.glu_up;
#pragma unroll
  for (int k = 0; k < kPieces; k++) {
    const int pc = piece(k);
    const bool in = p.x_kind != 0 && pc < pieces;
    xr[k] = in ? __ldg(reinterpret_cast<const uint4*>(p.x) + pc) : make_uint4(0, 0, 0, 0);
    if constexpr (kIn != kPlain)
      ar[k] = in && second ? __ldg(reinterpret_cast<const uint4*>(second) + pc) : make_uint4(0, 0, 0, 0);
  }

  if constexpr (kIn == kGlu) {  // swiglu_forward's values
#pragma unroll
    for (int k = 0; k < kPieces; k++)
      if (piece(k) < pieces)
        xr[k] = zip_bf16x8(xr[k], ar[k], [](float g, float u) { return silu_mul(g, u); });
  }
  if constexpr (kIn == kNorm) {  // r = x + x_add (to res_out), then rmsnorm(r) · norm_w, as add_rmsnorm
                                 // computes them
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < kPieces; k++) {
      const int pc = piece(k);
      if (pc >= pieces) break;
      if (p.x_add) xr[k] = zip_bf16x8(xr[k], ar[k], [](float u, float v) { return u + v; });
      if (p.res_out && blockIdx.x == 0) reinterpret_cast<uint4*>(p.res_out)[pc] = xr[k];
      ss = sum_squares_bf16x8(xr[k], ss);
    }
    const float rstd = block_rstd(ss, K, p.norm_eps);
#pragma unroll
    for (int k = 0; k < kPieces; k++) {
      const int pc = piece(k);
      if (pc >= pieces) break;
      xr[k] = zip_bf16x8(xr[k], __ldg(reinterpret_cast<const uint4*>(p.norm_w) + pc),
                         [rstd](float u, float w) { return u * rstd * w; });
    }
  }

  // The row: max of |f16(x)| below the threshold, the outlier bitmap, x at the outliers.
  for (int i = threadIdx.x; i < words; i += kThreads) s_bits[i] = 0u;
  __syncthreads();
  float a = 0.0f;
#pragma unroll
  for (int k = 0; k < kPieces; k++) {
    const int pc = piece(k);
    if (pc >= pieces) break;
    float v[8];
    load8(p.x, p.x_kind, xr[k], (int64_t)pc * 8, v);
    uint32_t bits = 0, hp[4];
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const __half hv = __float2half_rn(v[i]);
      const uint32_t hb = __half_as_ushort(hv);
      hp[i / 2] = i % 2 ? hp[i / 2] | hb << 16 : hb;
      const float f = fabsf(__half2float(hv));
      if (use_thr && f >= p.thr) {
        bits |= 1u << i;
        s_x[pc * 8 + i] = v[i];
      } else {
        a = cpu_max(a, f);
      }
    }
    xr[k] = make_uint4(hp[0], hp[1], hp[2], hp[3]);
    if (bits) atomicOr(&s_bits[pc >> 2], bits << (8 * (pc & 3)));
  }
  for (int d = 16; d > 0; d >>= 1) a = cpu_max(a, __shfl_xor_sync(0xffffffffu, a, d));
  if (lane == 0) s_max[warp] = a;
  __syncthreads();
  a = 0.0f;
  for (int i = 0; i < kWarps; i++) a = cpu_max(a, s_max[i]);  // NaN never enters: max is order-free

  // The codes (0 at the outlier columns); warp 0 lists the outlier columns.
  const float s = __fmul_rn(__fdiv_rn(1.0f, a), 127.0f);
#pragma unroll
  for (int k = 0; k < kPieces; k++) {
    const int pc = piece(k);
    if (pc >= pieces) break;
    const uint32_t out8 = (s_bits[pc >> 2] >> (8 * (pc & 3))) & 0xFFu;
    const uint32_t hp[4] = {xr[k].x, xr[k].y, xr[k].z, xr[k].w};
    uint32_t q[2] = {0u, 0u};
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const float hv = __half2float(__ushort_as_half((unsigned short)(hp[i / 2] >> (16 * (i % 2)))));
      const int r = a == 0.0f || ((out8 >> i) & 1u) ? 0 : __float2int_rn(__fmul_rn(hv, s));
      q[i / 4] |= (uint32_t)(uint8_t)(int8_t)max(-127, min(127, r)) << (8 * (i % 4));
    }
    *reinterpret_cast<uint2*>(s_qa + pc * 8) = make_uint2(q[0], q[1]);
  }
  if (warp == 0) {
    const int per_lane = (words + 31) / 32;
    const int w0 = min(words, lane * per_lane), w1 = min(words, w0 + per_lane);
    int n = 0;
    for (int i = w0; i < w1; i++) n += __popc(s_bits[i]);
    int incl = n;
    for (int d = 1; d < 32; d <<= 1) {
      const int t = __shfl_up_sync(0xffffffffu, incl, d);
      if (lane >= d) incl += t;
    }
    int idx = incl - n;
    for (int i = w0; i < w1; i++)
      for (uint32_t m = s_bits[i]; m; m &= m - 1) s_cols[idx++] = (uint16_t)(i * 32 + __ffs(m) - 1);
    if (lane == 31) s_count = incl;
  }
  __syncthreads();

  const int n_out = s_count;
  const int4* qa4 = reinterpret_cast<const int4*>(s_qa);
  // The output of row o of part j from its int32 sum (int8_epilogue_cuda's arithmetic).
  auto finish = [&](int j, int o, int32_t acc, float sb) {
    for (int d = 16; d > 0; d >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, d);
    float v = __fmul_rn(__fmul_rn((float)acc, __fmul_rn(a, sb)), kInv127Sq);
    const void* bias = pick(j, [](const RowPart& r) { return r.bias; });
    if (bias) v = __fadd_rn(v, load_kind(bias, o, p.bias_kind));
    const int8_t* qb = pick(j, [](const RowPart& r) { return r.qb; }) + (int64_t)o * K;
    for (int j0 = 0; j0 < n_out; j0 += 32) {  // lane t brings column j0 + t's terms
      float xv = 0.0f, wv = 0.0f;
      if (j0 + lane < n_out) {
        const int c = s_cols[j0 + lane];
        xv = s_x[c];
        wv = __fmul_rn(__fmul_rn((float)qb[c], sb), kInv127);
      }
      const int m = min(32, n_out - j0);
      for (int t = 0; t < m; t++)
        v = fmaf(__shfl_sync(0xffffffffu, xv, t), __shfl_sync(0xffffffffu, wv, t), v);
    }
    if (lane == 0) store_kind(pick(j, [](const RowPart& r) { return r.out; }), o, p.out_kind, v);
  };
  int cg = g0, cb = 0;  // the sum cursor
  int32_t acc = 0;
  float sb = 0.0f;
  auto consume = [&](Batch& b) {
    if (cb == 0) sb = b.sb;
#pragma unroll
    for (int u = 0; u < kLoads; u++) {
      const int i = cb + u * 32 + lane;
      if (i < nv) {
        const int4 q = qa4[i];
        acc = __dp4a(q.x, b.w[u].x, acc);
        acc = __dp4a(q.y, b.w[u].y, acc);
        acc = __dp4a(q.z, b.w[u].z, acc);
        acc = __dp4a(q.w, b.w[u].w, acc);
      }
    }
    issue(b);
    cb += 32 * kLoads;
    if (cb >= nv) {
      const int j = part_of(cg);
      finish(j, row_of(cg, j), acc, sb);
      acc = 0, cb = 0, cg += kWarps;
    }
  };
  while (cg < g_end) {
    consume(ba);
    if (cg >= g_end) break;
    consume(bb);
  }
}

// Pieces of 8 values a thread takes from a row of K with the norm or without.
int pieces_per_thread(int64_t K, bool norm) {
  const int64_t stride = norm ? rmsnorm_threads(K) : kThreads;
  return (int)((K / 8 + stride - 1) / stride);
}

bool row_fits(int64_t K, bool norm) {
  static size_t max_smem = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
      return (size_t)0;
    return (size_t)v - 4096;  // the static slots
  }();
  return K > 0 && K % 16 == 0 && K <= 0x7fffffff && pieces_per_thread(K, norm) <= kMaxPieces &&
         row_smem(K) <= max_smem;
}

}  // namespace

bool int8_gemv_row_supported(int64_t K, const void* x, DType x_dtype) {
  return row_fits(K, false) && (reinterpret_cast<uintptr_t>(x) & 15) == 0 &&
         (x_dtype == DType::BF16 || x_dtype == DType::F16 || x_dtype == DType::F32);
}

// The two-input rows hold both inputs' pieces: at most 2 per thread (the norm: K <= 8192; the SwiGLU: K <=
// 16384).
bool int8_gemv_row_norm_supported(int64_t K) {
  return row_fits(K, true) && pieces_per_thread(K, true) <= 2;
}
bool int8_gemv_row_glu_supported(int64_t K) {
  return row_fits(K, false) && pieces_per_thread(K, false) <= 2;
}

void int8_gemv_row_cuda(const std::vector<Int8Epilogue>& parts, float threshold, cudaStream_t stream,
                        const Int8RowInput* in) {
  const char* op = "int8_gemv_row_cuda";
  if (parts.empty() || (int)parts.size() > kInt8RowMaxParts)
    throw_error(ErrorKind::Usage, op, ": 1 to ", kInt8RowMaxParts, " weights, got ", parts.size());
  const Int8Epilogue& e0 = parts[0];
  if (!int8_gemv_row_supported(e0.K, e0.x, e0.x_dtype))
    throw_error(ErrorKind::Usage, op, ": K = ", e0.K,
                " needs K % 16 == 0, at most 32768, and a 16-byte aligned x");
  const bool norm = in && in->norm_w, glu = in && in->glu_up;
  if (in) {
    auto row_ok = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15) == 0; };
    if (norm == glu || e0.x_dtype != DType::BF16 || !row_ok(in->norm_w) || !row_ok(in->x_add) ||
        !row_ok(in->res_out) || !row_ok(in->glu_up))
      throw_error(
          ErrorKind::Usage, op,
          ": the row's input stage takes a BF16 x, 16-byte aligned rows, and either norm_w or glu_up");
    if (norm ? !int8_gemv_row_norm_supported(e0.K) : !int8_gemv_row_glu_supported(e0.K))
      throw_error(ErrorKind::Usage, op, ": K = ", e0.K, " is past what the fused ", norm ? "norm" : "SwiGLU",
                  " takes (K % 16 == 0, at most ", norm ? 8192 : 16384, ")");
  }
  RowParams p{};
  p.x = e0.x;
  if (in) {
    p.x_add = in->x_add;
    p.norm_w = in->norm_w;
    p.res_out = in->res_out;
    p.norm_eps = in->eps;
    p.glu_up = in->glu_up;
  }
  p.K = (int)e0.K;
  p.thr = threshold;
  p.x_kind = float_kind(e0.x_dtype, "int8_gemv_row_cuda (x)");
  p.out_kind = float_kind(e0.out_dtype, "int8_gemv_row_cuda (out)");
  p.bias_kind = 0;
  int64_t total = 0;
  bool any_bias = false;
  for (size_t j = 0; j < parts.size(); j++) {
    const Int8Epilogue& e = parts[j];
    if (e.N != 1 || e.K != e0.K || e.x != e0.x || e.out_dtype != e0.out_dtype)
      throw_error(ErrorKind::Usage, op, ": the weights must share one row of x and the output dtype");
    if (e.bias) {
      const int bk = float_kind(e.bias_dtype, "int8_gemv_row_cuda (bias)");
      if (any_bias && bk != p.bias_kind)
        throw_error(ErrorKind::Usage, op, ": the biases must share one dtype");
      p.bias_kind = bk;
      any_bias = true;
    }
    total += e.O;
    if (total > 0x7fffffff) throw_error(ErrorKind::Usage, op, ": too many outputs (", total, ")");
    p.part[j] = RowPart{e.qb, e.sb, e.bias, e.out, (int)total};
  }
  for (size_t j = parts.size(); j < kInt8RowMaxParts; j++)
    p.part[j] = RowPart{nullptr, nullptr, nullptr, nullptr, (int)total};
  p.outputs = (int)total;
  if (total == 0) return;
  static const int sms = [] {
    int n = 0, tps = 0;
    device_sm_shape(&n, &tps);
    return n;
  }();
  const int blocks = (int)std::min<int64_t>(sms, total);
  const size_t smem = row_smem(e0.K);
  // Rows of at most 2 pieces per thread take the kernel that holds 2 (fewer registers).
  const bool short_row = pieces_per_thread(e0.K, norm) <= 2;
  auto kernel = norm        ? int8_gemv_row_kernel<2, kNorm>
                : glu       ? int8_gemv_row_kernel<2, kGlu>
                : short_row ? int8_gemv_row_kernel<2, kPlain>
                            : int8_gemv_row_kernel<kMaxPieces, kPlain>;
  const int which = norm ? 0 : glu ? 1 : short_row ? 2 : 3;
  static size_t set[4] = {0, 0, 0, 0};  // the largest dynamic shared memory allowed so far, per kernel
  if (smem > set[which]) {
    const cudaError_t r =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (r != cudaSuccess) throw_error(ErrorKind::Cuda, op, ": cudaFuncSetAttribute: ", cudaGetErrorString(r));
    set[which] = smem;
  }
  const cudaError_t launched = cuda::launch_pdl(kernel, dim3(blocks), dim3(kThreads), smem, stream, p);
  if (launched != cudaSuccess) throw_error(ErrorKind::Cuda, op, ": launch: ", cudaGetErrorString(launched));
}

}  // namespace qtune
