// Linear layer on the GPU: out[N, O] = x[N, I] · w[O, I]ᵀ (+ bias[O]), f32 accumulation.
// - N > 4 (prefill, training): one cuBLASLt GEMM (bf16 or f32 operands, f32 compute), bias through the
//   BIAS epilogue when it has out's dtype, else a small kernel after the GEMM.
// - N <= 2 (decode): a GEMV that streams each weight row once with 16-byte loads, eight in flight per
//   lane, one warp per output row, applying the weight chunk to all N input rows (bf16 x and w). It is
//   launched as a programmatic dependent launch, so its blocks are resident when the kernel before ends.
//   linear_forward_multi runs several weights that share x (q/k/v, gate/up) in one launch: at decode
//   each launch costs several microseconds of ramp and drain beyond its bytes.
// In cuBLASLt's column-major terms: outᵀ[O, N] = (w as col-major [I, O])ᵀ · (x as col-major [I, N]).
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"

namespace qtune {
namespace cuda {

namespace {

constexpr int kGemvMaxRows = 2;  // above this cuBLASLt is as fast (measured on H200)
constexpr int kGemvWarps = 4;    // output rows per block
constexpr int kGemvUnroll = 8;   // 16-byte weight loads in flight per lane (16 was slower, I = 14336)

__device__ __forceinline__ float dot8_bf16(const uint4& a, const uint4& b) {
  const __nv_bfloat162* a2 = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* b2 = reinterpret_cast<const __nv_bfloat162*>(&b);
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 fa = __bfloat1622float2(a2[i]);
    float2 fb = __bfloat1622float2(b2[i]);
    s = fmaf(fa.x, fb.x, s);
    s = fmaf(fa.y, fb.y, s);
  }
  return s;
}

// Loads one round of weight vectors: wv[u] = wrow[base + 32u] (zero past the row's end).
__device__ __forceinline__ void gemv_load_round(uint4 (&wv)[kGemvUnroll], const uint4* wrow, int base,
                                                int nvec) {
#pragma unroll
  for (int u = 0; u < kGemvUnroll; u++) {
    int idx = base + u * 32;
    wv[u] = idx < nvec ? __ldcs(wrow + idx) : make_uint4(0, 0, 0, 0);
  }
}

// Up to kGemvMaxParts weights that share one input x, computed in one launch (q/k/v, gate/up): the
// rows of all parts are numbered together, part j owning rows [start[j], start[j] + rows[j]).
constexpr int kGemvMaxParts = 4;
struct GemvParts {
  void* out[kGemvMaxParts];               // [NR, rows[j]], type TO
  const __nv_bfloat16* w[kGemvMaxParts];  // [rows[j], I]
  const void* bias[kGemvMaxParts];        // [rows[j]] type TB, or null
  int start[kGemvMaxParts], rows[kGemvMaxParts];
  int count, total_rows;
};

// out_j[r, o] = Σ_i x[r, i] w_j[o, i] (+ bias_j[o]) for r < NR; one warp per output row o (of all parts).
// I % 8 == 0, 16-byte aligned rows. Launched as a programmatic dependent launch: its blocks are
// scheduled while the previous kernel finishes and start loading once that kernel is complete.
template <int NR, class TO, class TB>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_kernel(const GemvParts parts, const __nv_bfloat16* __restrict__ x, int I) {
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int row = blockIdx.x * kGemvWarps + warp;
  if (row >= parts.total_rows) return;
  int j = 0;
#pragma unroll
  for (int p = 1; p < kGemvMaxParts; p++)
    if (p < parts.count && row >= parts.start[p]) j = p;
  const int o = row - parts.start[j], O = parts.rows[j];
  const int nvec = I / 8;
  const uint4* wrow = reinterpret_cast<const uint4*>(parts.w[j] + (int64_t)o * I);  // [I/8] of 8 bf16
  const uint4* xv = reinterpret_cast<const uint4*>(x);                              // [NR, I/8]
  pdl_trigger();
  // Wait for the previous kernel before the first weight load too: a weight may have just been written
  // (dequantised, merged, updated) by it. The launch itself still overlaps that kernel's tail.
  pdl_wait();
  uint4 wv[kGemvUnroll];
  gemv_load_round(wv, wrow, lane, nvec);
  float acc[NR];
#pragma unroll
  for (int r = 0; r < NR; r++) acc[r] = 0.0f;
  for (int base = lane;;) {
#pragma unroll
    for (int u = 0; u < kGemvUnroll; u++) {
      int idx = base + u * 32;
      if (idx < nvec) {
#pragma unroll
        for (int r = 0; r < NR; r++) acc[r] += dot8_bf16(wv[u], __ldg(xv + (int64_t)r * nvec + idx));
      }
    }
    base += 32 * kGemvUnroll;
    if (base >= nvec) break;
    gemv_load_round(wv, wrow, base, nvec);
  }
  TO* out = static_cast<TO*>(parts.out[j]);
  const TB* bias = static_cast<const TB*>(parts.bias[j]);
#pragma unroll
  for (int r = 0; r < NR; r++) {
    float s = warp_sum(acc[r]);
    if (lane == 0) {
      if (bias) s += to_f32(bias[o]);
      out[(int64_t)r * O + o] = from_f32<TO>(s);
    }
  }
}

// out[n, o] += bias[o].
template <class TO, class TB>
__global__ void add_bias_kernel(TO* __restrict__ out, const TB* __restrict__ bias, int64_t n, int O) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = from_f32<TO>(to_f32(out[i]) + to_f32(bias[i % O]));
}

cudaDataType_t lt_type(DType t) {
  switch (t) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::BF16:
      return CUDA_R_16BF;
    case DType::F16:
      return CUDA_R_16F;
    default:
      throw_error(ErrorKind::Unsupported, "linear_forward: no cuBLASLt type for ", dtype_name(t));
  }
}

int alignment_of(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

// One cached GEMM plan per (shapes, dtypes, bias epilogue, pointer alignments).
struct PlanKey {
  int64_t N, I, O;
  int xt, wt, ot;
  bool bias;
  int align_x, align_w, align_o;
  bool operator<(const PlanKey& k) const {
    return std::tie(N, I, O, xt, wt, ot, bias, align_x, align_w, align_o) <
           std::tie(k.N, k.I, k.O, k.xt, k.wt, k.ot, k.bias, k.align_x, k.align_w, k.align_o);
  }
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo;
};

std::mutex plan_mu;
std::map<PlanKey, Plan>& plans() {
  static auto* m = new std::map<PlanKey, Plan>();
  return *m;
}

Plan make_plan(const PlanKey& k, const Tensor& x, const Tensor& w, const Tensor& out) {
  CudaContext& ctx = context();
  Plan p;
  QT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (k.bias) {
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    cudaDataType_t bt = lt_type(out.dtype());
    QT_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  QT_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&p.a, lt_type(w.dtype()), k.I, k.O, k.I));  // w: col-major [I, O]
  QT_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&p.b, lt_type(x.dtype()), k.I, k.N, k.I));  // x: col-major [I, N]
  QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, lt_type(out.dtype()), k.O, k.N, k.O));  // outᵀ [O, N]
  cublasLtMatmulPreference_t pref;
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = ctx.workspace_bytes;
  QT_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  uint32_t ax = k.align_x, aw = k.align_w, ao = k.align_o;
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw,
                                                       sizeof(aw)));
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax,
                                                       sizeof(ax)));
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ao,
                                                       sizeof(ao)));
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ao,
                                                       sizeof(ao)));
  cublasLtMatmulHeuristicResult_t res;
  int count = 0;
  cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(ctx.lt, p.desc, p.a, p.b, p.c, p.c, pref, 1, &res, &count);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || count == 0)
    throw_error(ErrorKind::Unsupported, "linear_forward: cuBLASLt has no algorithm for x ", x.describe(),
                " · w ", w.describe(), "ᵀ → out ", out.describe(), " (status ", (int)st, ")");
  p.algo = res.algo;
  return p;
}

template <int NR, class TO, class TB>
void launch_gemv_typed(const GemvParts& parts, const __nv_bfloat16* x, int I) {
  QT_CUDA_CHECK(launch_pdl(gemv_kernel<NR, TO, TB>, dim3(ceil_div(parts.total_rows, kGemvWarps)),
                           dim3(kGemvWarps * 32), 0, stream(), parts, x, I));
}

// One GEMV launch for outs[j] = x · ws[j]ᵀ (+ biases[j]); all outs share a dtype, all biases too.
void launch_gemv(const std::vector<Tensor*>& outs, const Tensor& x, const std::vector<const Tensor*>& ws,
                 const std::vector<const Tensor*>& biases, int N, int I) {
  GemvParts parts = {};
  parts.count = (int)ws.size();
  for (int j = 0; j < parts.count; j++) {
    parts.out[j] = outs[j]->raw();
    parts.w[j] = ws[j]->data<__nv_bfloat16>();
    parts.bias[j] = biases.empty() || !biases[j] ? nullptr : biases[j]->raw();
    parts.start[j] = parts.total_rows;
    parts.rows[j] = (int)ws[j]->size(0);
    parts.total_rows += parts.rows[j];
  }
  DType bt = outs[0]->dtype();
  for (const Tensor* b : biases)
    if (b) bt = b->dtype();
  const auto* xp = x.data<__nv_bfloat16>();
  QT_DISPATCH_FLOAT(outs[0]->dtype(), "linear_forward", TO, {
    QT_DISPATCH_FLOAT(bt, "linear_forward (bias)", TB, {
      if (N == 1)
        launch_gemv_typed<1, TO, TB>(parts, xp, I);
      else
        launch_gemv_typed<2, TO, TB>(parts, xp, I);
    });
  });
  QT_CUDA_CHECK_LAUNCH("gemv_kernel");
}

}  // namespace

void linear_forward_cublaslt(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias) {
  int64_t I = w.size(1), O = w.size(0), N = x.numel() / I;
  bool epi_bias = bias && bias->dtype() == out.dtype();
  PlanKey key{N,
              I,
              O,
              (int)x.dtype(),
              (int)w.dtype(),
              (int)out.dtype(),
              epi_bias,
              alignment_of(x.raw()),
              alignment_of(w.raw()),
              alignment_of(out.raw())};
  Plan plan;
  {
    std::lock_guard<std::mutex> lock(plan_mu);
    auto it = plans().find(key);
    if (it == plans().end()) it = plans().emplace(key, make_plan(key, x, w, out)).first;
    plan = it->second;
    if (epi_bias) {
      const void* bp = bias->raw();
      QT_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof(bp)));
    }
    CudaContext& ctx = context();
    float alpha = 1.0f, beta = 0.0f;
    QT_CUBLAS_CHECK(cublasLtMatmul(ctx.lt, plan.desc, &alpha, w.raw(), plan.a, x.raw(), plan.b, &beta,
                                   out.raw(), plan.c, out.raw(), plan.c, &plan.algo, ctx.workspace,
                                   ctx.workspace_bytes, ctx.stream));
  }
  if (bias && !epi_bias) {
    int64_t n = out.numel();
    int blocks = (int)std::min<int64_t>((n + 255) / 256, (int64_t)context().num_sms * 16);
    QT_DISPATCH_FLOAT(out.dtype(), "linear_forward", TO, {
      QT_DISPATCH_FLOAT(bias->dtype(), "linear_forward (bias)", TB, {
        add_bias_kernel<TO, TB><<<blocks, 256, 0, stream()>>>(out.data<TO>(), bias->data<TB>(), n, (int)O);
      });
    });
    QT_CUDA_CHECK_LAUNCH("add_bias_kernel");
  }
}

namespace {

struct LinearDims {
  int64_t N = 0, I = 0, O = 0;
  bool gemv_ok = false;  // bf16 operands, N small, 16-byte rows
};

LinearDims check_linear(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias) {
  const char* op = "linear_forward";
  require_cuda(out, op, "out");
  require_cuda(x, op, "x");
  require_cuda(w, op, "w");
  if (w.ndim() != 2) throw_error(ErrorKind::Shape, op, ": w must be [O, I], got ", w.describe());
  LinearDims d;
  d.O = w.size(0);
  d.I = w.size(1);
  if (x.ndim() < 1 || x.size(-1) != d.I)
    throw_error(ErrorKind::Shape, op, ": x ", x.describe(), " does not match w ", w.describe(), " (I = ", d.I,
                ")");
  d.N = x.numel() / (d.I ? d.I : 1);
  if (out.numel() != d.N * d.O || out.size(-1) != d.O)
    throw_error(ErrorKind::Shape, op, ": out ", out.describe(), " is not [", d.N, ", ", d.O, "]");
  if (bias) {
    require_cuda(*bias, op, "bias");
    if (bias->numel() != d.O)
      throw_error(ErrorKind::Shape, op, ": bias ", bias->describe(), " does not match w ", w.describe());
    require_dtype(*bias, op, "bias", DType::BF16, DType::F32, DType::F16);
  }
  bool bf16 = x.dtype() == DType::BF16 && w.dtype() == DType::BF16;
  bool f32 = x.dtype() == DType::F32 && w.dtype() == DType::F32;
  bool f16 = x.dtype() == DType::F16 && w.dtype() == DType::F16;
  if (!bf16 && !f32 && !f16)
    throw_error(ErrorKind::Unsupported, op, ": x ", x.describe(), " and w ", w.describe(),
                " must both be BF16, both F16 or both F32");
  if (f32)
    require_dtype(out, op, "out", DType::F32);
  else
    require_dtype(out, op, "out", x.dtype(), DType::F32);
  checked_int(d.N, op);
  checked_int(d.I, op);
  checked_int(d.O, op);
  if (d.I == 0 && d.N * d.O != 0)
    throw_error(ErrorKind::Shape, op, ": w ", w.describe(), " has no input features");
  d.gemv_ok = bf16 && d.N <= kGemvMaxRows && d.I % 8 == 0 && alignment_of(x.raw()) >= 16 &&
              alignment_of(w.raw()) >= 16;
  return d;
}

}  // namespace

void linear_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias) {
  LinearDims d = check_linear(out, x, w, bias);
  if (d.N == 0 || d.O == 0) return;
  if (d.gemv_ok)
    launch_gemv({&out}, x, {&w}, {bias}, (int)d.N, (int)d.I);
  else
    linear_forward_cublaslt(out, x, w, bias);
}

void linear_forward_multi(const std::vector<Tensor*>& outs, const Tensor& x,
                          const std::vector<const Tensor*>& ws, const std::vector<const Tensor*>& biases) {
  const char* op = "linear_forward_multi";
  if (outs.size() != ws.size() || (!biases.empty() && biases.size() != ws.size()) || ws.empty())
    throw_error(ErrorKind::Shape, op, ": ", outs.size(), " outputs, ", ws.size(), " weights and ",
                biases.size(), " biases (need as many outputs as weights, and no biases or one per weight)");
  bool fused = ws.size() <= (size_t)kGemvMaxParts;
  int64_t N = -1, I = 0;
  for (size_t j = 0; j < ws.size(); j++) {
    if (!outs[j] || !ws[j]) throw_error(ErrorKind::Shape, op, ": output or weight ", j, " is null");
    const Tensor* b = biases.empty() ? nullptr : biases[j];
    LinearDims d = check_linear(*outs[j], x, *ws[j], b);
    fused = fused && d.gemv_ok && d.O > 0 && outs[j]->dtype() == outs[0]->dtype();
    if (b && biases[0] && b->dtype() != biases[0]->dtype()) fused = false;
    if (b && !biases[0]) fused = false;
    N = d.N;
    I = d.I;
  }
  if (N == 0) return;
  if (fused) {
    launch_gemv(outs, x, ws, biases, (int)N, (int)I);
    return;
  }
  for (size_t j = 0; j < ws.size(); j++)
    linear_forward(*outs[j], x, *ws[j], biases.empty() ? nullptr : biases[j]);
}

}  // namespace cuda
}  // namespace qtune
