// Linear backward on the GPU through a dense weight, each gradient only when asked for, accumulated (+=):
//   dx[N, I] += dy[N, O]·w[O, I],   dw[O, I] += dy[N, O]ᵀ·x[N, I],   db[O] += Σ_n dy[n, :].
// dy, x, w BF16 (or all F32); dx BF16 or F32 (F32 when the inputs are); dw, db F32.
// The two products are cuBLASLt GEMMs with beta = 1 (f32 compute, one rounding of D = A·B + C) on the
// context's handle, stream and workspace. In cuBLASLt's column-major terms, where a row-major [R, C]
// matrix is a column-major [C, R] one:
//   dxᵀ[I, N] += wᵀ[I, O] · dyᵀ[O, N]          (no transposes)
//   dwᵀ[I, O] += xᵀ[I, N] · (dyᵀ[O, N])ᵀ        (B transposed)
// db is a column sum of dy: a block of 32 columns × 16 row lanes, reduced in shared memory in a fixed
// order (deterministic).
#include <map>
#include <mutex>
#include <tuple>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"
#include "ops/cuda/dispatch_train.cuh"

namespace qtune {
namespace cuda {

namespace {

constexpr int kBiasRowLanes = 16;

// db[o] += Σ_n dy[n, o]; blockDim (32, kBiasRowLanes), one block per 32 columns.
template <class TG>
__global__ void bias_grad_kernel(float* __restrict__ db, const TG* __restrict__ dy, int N, int O) {
  __shared__ float sums[kBiasRowLanes][33];
  int o = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (o < O)
    for (int n = threadIdx.y; n < N; n += kBiasRowLanes) s += to_f32(dy[(int64_t)n * O + o]);
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || o >= O) return;
  float t = 0.0f;
  for (int j = 0; j < kBiasRowLanes; j++) t += sums[j][threadIdx.x];
  db[o] += t;
}

cudaDataType_t lt_type(DType t) {
  if (t == DType::BF16) return CUDA_R_16BF;
  if (t == DType::F32) return CUDA_R_32F;
  throw_error(ErrorKind::Unsupported, "linear_backward: no cuBLASLt type for ", dtype_name(t));
}

int alignment_of(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

// D[m, n] = A[m, k]·op(B)[k, n] + D, column-major and packed: lda = m, ldb = k (or n when B is stored
// transposed, [n, k]), ldc = m. One cached plan per shapes, transpose, dtypes and pointer alignments.
struct GemmKey {
  int64_t m, n, k;
  bool trans_b;
  int at, bt, ct;
  int align_a, align_b, align_c;
  bool operator<(const GemmKey& o) const {
    return std::tie(m, n, k, trans_b, at, bt, ct, align_a, align_b, align_c) <
           std::tie(o.m, o.n, o.k, o.trans_b, o.at, o.bt, o.ct, o.align_a, o.align_b, o.align_c);
  }
};

struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo;
};

std::mutex gemm_mu;
std::map<GemmKey, GemmPlan>& gemm_plans() {
  static auto* m = new std::map<GemmKey, GemmPlan>();
  return *m;
}

GemmPlan make_gemm_plan(const GemmKey& k, const char* what) {
  CudaContext& ctx = context();
  GemmPlan p;
  QT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = CUBLAS_OP_N, tb = k.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, lt_type((DType)k.at), k.m, k.k, k.m));
  if (k.trans_b)
    QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, lt_type((DType)k.bt), k.n, k.k, k.n));
  else
    QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, lt_type((DType)k.bt), k.k, k.n, k.k));
  QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, lt_type((DType)k.ct), k.m, k.n, k.m));
  cublasLtMatmulPreference_t pref;
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = ctx.workspace_bytes;
  QT_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  uint32_t aa = k.align_a, ab = k.align_b, ac = k.align_c;
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa,
                                                       sizeof(aa)));
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab,
                                                       sizeof(ab)));
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac,
                                                       sizeof(ac)));
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac,
                                                       sizeof(ac)));
  cublasLtMatmulHeuristicResult_t res;
  int count = 0;
  cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(ctx.lt, p.desc, p.a, p.b, p.c, p.c, pref, 1, &res, &count);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || count == 0)
    throw_error(ErrorKind::Unsupported, "linear_backward: cuBLASLt has no algorithm for ", what, " (m ", k.m,
                ", n ", k.n, ", k ", k.k, ", status ", (int)st, ")");
  p.algo = res.algo;
  return p;
}

// c += a·op(b) as described at GemmKey.
void gemm_accumulate(void* c, DType ct, const void* a, DType at, const void* b, DType bt, bool trans_b,
                     int64_t m, int64_t n, int64_t k, const char* what) {
  if (m == 0 || n == 0 || k == 0) return;
  GemmKey key{m, n, k, trans_b, (int)at, (int)bt, (int)ct, alignment_of(a), alignment_of(b), alignment_of(c)};
  std::lock_guard<std::mutex> lock(gemm_mu);
  auto it = gemm_plans().find(key);
  if (it == gemm_plans().end()) it = gemm_plans().emplace(key, make_gemm_plan(key, what)).first;
  const GemmPlan& p = it->second;
  CudaContext& ctx = context();
  float alpha = 1.0f, beta = 1.0f;
  QT_CUBLAS_CHECK(cublasLtMatmul(ctx.lt, p.desc, &alpha, a, p.a, b, p.b, &beta, c, p.c, c, p.c, &p.algo,
                                 ctx.workspace, ctx.workspace_bytes, ctx.stream));
}

}  // namespace

void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const char* op = "linear_backward";
  require_cuda(dy, op, "dy");
  require_cuda(x, op, "x");
  require_cuda(w, op, "w");
  if (w.ndim() != 2) throw_error(ErrorKind::Shape, op, ": w must be [O, I], got ", w.describe());
  int64_t O = w.size(0), I = w.size(1);
  if (x.ndim() < 1 || x.size(-1) != I || dy.ndim() < 1 || dy.size(-1) != O)
    throw_error(ErrorKind::Shape, op, ": x ", x.describe(), " and dy ", dy.describe(), " do not match w ",
                w.describe());
  int64_t N = I ? x.numel() / I : (O ? dy.numel() / O : 0);
  if (x.numel() != N * I || dy.numel() != N * O)
    throw_error(ErrorKind::Shape, op, ": x ", x.describe(), " and dy ", dy.describe(),
                " have different row counts");
  bool bf16 = dy.dtype() == DType::BF16 && x.dtype() == DType::BF16 && w.dtype() == DType::BF16;
  bool f32 = dy.dtype() == DType::F32 && x.dtype() == DType::F32 && w.dtype() == DType::F32;
  if (!bf16 && !f32)
    throw_error(ErrorKind::Unsupported, op, ": dy ", dy.describe(), ", x ", x.describe(), " and w ",
                w.describe(), " must all be BF16 or all F32");
  if (dx) {
    require_cuda(*dx, op, "dx");
    require_dtype(*dx, op, "dx", DType::F32, bf16 ? DType::BF16 : DType::F32);
    if (dx->numel() != N * I)
      throw_error(ErrorKind::Shape, op, ": dx ", dx->describe(), " does not match x ", x.describe());
  }
  if (dw) {
    require_cuda(*dw, op, "dw");
    require_dtype(*dw, op, "dw", DType::F32);
    if (dw->numel() != O * I)
      throw_error(ErrorKind::Shape, op, ": dw ", dw->describe(), " does not match w ", w.describe());
  }
  if (db) {
    require_cuda(*db, op, "db");
    require_dtype(*db, op, "db", DType::F32);
    if (db->numel() != O) throw_error(ErrorKind::Shape, op, ": db ", db->describe(), " is not [", O, "]");
  }
  checked_int(N, op);
  checked_int(I, op);
  checked_int(O, op);
  if (N == 0) return;
  if (dx)  // dxᵀ[I, N] += wᵀ[I, O] · dyᵀ[O, N]
    gemm_accumulate(dx->raw(), dx->dtype(), w.raw(), w.dtype(), dy.raw(), dy.dtype(), false, I, N, O,
                    "dx += dy·w");
  if (dw)  // dwᵀ[I, O] += xᵀ[I, N] · dy[N, O]
    gemm_accumulate(dw->raw(), dw->dtype(), x.raw(), x.dtype(), dy.raw(), dy.dtype(), true, I, O, N,
                    "dw += dyᵀ·x");
  if (db && O > 0) {
    QT_DISPATCH_TRAIN(dy.dtype(), op, "dy", TG, {
      bias_grad_kernel<TG><<<ceil_div(O, 32), dim3(32, kBiasRowLanes), 0, stream()>>>(
          db->data<float>(), dy.data<TG>(), (int)N, (int)O);
    });
    QT_CUDA_CHECK_LAUNCH("bias_grad_kernel");
  }
}

}  // namespace cuda
}  // namespace qtune
