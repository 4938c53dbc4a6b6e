// The general GEMM of ops/matmul.h on the GPU, through cuBLASLt: out[M, N] = alpha·op(a)·op(b) + beta·out
// with row-major tensors. cuBLASLt is column-major, and a row-major [r, c] matrix read column-major is its
// transpose, so we ask it for outᵀ[N, M] = op(b)ᵀ·op(a)ᵀ: b becomes its A operand and a its B operand,
// each transposed exactly when the caller transposes it. f32 accumulation; a and b share a dtype (F32 or
// BF16/F16); out F32 or 16-bit. One cached plan per (shapes, transposes, dtypes, pointer alignments).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <map>
#include <mutex>
#include <tuple>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"

namespace qtune {
namespace cuda {
namespace {

cudaDataType_t gemm_type(DType t) {
  switch (t) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::BF16:
      return CUDA_R_16BF;
    case DType::F16:
      return CUDA_R_16F;
    default:
      throw_error(ErrorKind::Unsupported, "matmul: no cuBLASLt type for ", dtype_name(t));
  }
}

uint32_t pointer_alignment(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

struct GemmKey {
  int64_t M, N, K;
  bool ta, tb;
  int in_t, out_t;
  uint32_t al_a, al_b, al_o;
  bool operator<(const GemmKey& o) const {
    return std::tie(M, N, K, ta, tb, in_t, out_t, al_a, al_b, al_o) <
           std::tie(o.M, o.N, o.K, o.ta, o.tb, o.in_t, o.out_t, o.al_a, o.al_b, o.al_o);
  }
};

struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t lb = nullptr, la = nullptr, lc = nullptr;  // cuBLASLt's A = b, B = a
  cublasLtMatmulAlgo_t algo;
};

// Milliseconds of one run of algo on the operands (into a scratch output), or a negative value when it fails.
float time_algo(const GemmPlan& p, const cublasLtMatmulAlgo_t& algo, const Tensor& a, const Tensor& b,
                Tensor& scratch) {
  CudaContext& ctx = context();
  const float alpha = 1.0f, beta = 0.0f;
  auto launch = [&] {
    return cublasLtMatmul(ctx.lt, p.desc, &alpha, b.raw(), p.lb, a.raw(), p.la, &beta, scratch.raw(), p.lc,
                          scratch.raw(), p.lc, &algo, ctx.workspace, ctx.workspace_bytes, ctx.stream);
  };
  if (launch() != CUBLAS_STATUS_SUCCESS) return -1.0f;
  cudaEvent_t e0, e1;
  QT_CUDA_CHECK(cudaEventCreate(&e0));
  QT_CUDA_CHECK(cudaEventCreate(&e1));
  QT_CUDA_CHECK(cudaEventRecord(e0, ctx.stream));
  bool ok = true;
  for (int i = 0; i < 3; i++) ok = ok && launch() == CUBLAS_STATUS_SUCCESS;
  QT_CUDA_CHECK(cudaEventRecord(e1, ctx.stream));
  QT_CUDA_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  QT_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ok ? ms : -1.0f;
}

// The plan for a new shape. cuBLASLt's first heuristic choice can be poor for the skinny products of LoRA
// (an [N, r] output over a long K needs split-K to fill the GPU), so for outputs with a side <= 64 (unless
// QTUNE_GEMM_AUTOTUNE=0) the top candidates are timed once on the real operands (into a scratch output) and
// the fastest is kept; large products keep the heuristic's first choice.
GemmPlan make_gemm_plan(const GemmKey& k, const Tensor& a, const Tensor& b, const Tensor& out) {
  CudaContext& ctx = context();
  GemmPlan p;
  QT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t op_b = k.tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = k.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_b, sizeof(op_b)));
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_a, sizeof(op_a)));
  cudaDataType_t it = gemm_type((DType)k.in_t), ot = gemm_type((DType)k.out_t);
  // b row-major [K, N] (or [N, K] when tb) read column-major: [N, K] (or [K, N]).
  QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lb, it, k.tb ? k.K : k.N, k.tb ? k.N : k.K, k.tb ? k.K : k.N));
  // a row-major [M, K] (or [K, M] when ta) read column-major: [K, M] (or [M, K]).
  QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.la, it, k.ta ? k.M : k.K, k.ta ? k.K : k.M, k.ta ? k.M : k.K));
  QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lc, ot, k.N, k.M, k.N));  // outᵀ [N, M]
  cublasLtMatmulPreference_t pref;
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = ctx.workspace_bytes;
  QT_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, k.al_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, k.al_a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, k.al_o},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, k.al_o}};
  for (const auto& [attr, v] : aligns)
    QT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &v, sizeof(v)));
  static const bool autotune_on = [] {
    const char* e = std::getenv("QTUNE_GEMM_AUTOTUNE");
    return !(e && std::string(e) == "0");
  }();
  const bool autotune = autotune_on && std::min(k.M, k.N) <= 64;
  cublasLtMatmulHeuristicResult_t res[8];
  int count = 0;
  cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(ctx.lt, p.desc, p.lb, p.la, p.lc, p.lc, pref, autotune ? 8 : 1, res, &count);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || count == 0)
    throw_error(ErrorKind::Unsupported, "matmul: cuBLASLt has no algorithm for [", k.M, ", ", k.K, "]·[", k.K,
                ", ", k.N, "] in ", dtype_name((DType)k.in_t), " → ", dtype_name((DType)k.out_t), " (status ",
                (int)st, ")");
  p.algo = res[0].algo;
  if (count > 1) {
    Tensor scratch = Tensor::empty(out.shape(), out.dtype(), Device::CUDA);
    float best = -1.0f;
    for (int i = 0; i < count; i++) {
      const float ms = time_algo(p, res[i].algo, a, b, scratch);
      if (ms >= 0 && (best < 0 || ms < best)) {
        best = ms;
        p.algo = res[i].algo;
      }
    }
  }
  return p;
}

}  // namespace

void matmul(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, float alpha, float beta) {
  const char* op = "matmul";
  require_cuda(out, op, "out");
  require_cuda(a, op, "a");
  require_cuda(b, op, "b");
  if (a.dtype() != b.dtype())
    throw_error(ErrorKind::Shape, op, ": a ", a.describe(), " and b ", b.describe(), " must share a dtype");
  require_dtype(a, op, "a", DType::F32, DType::BF16, DType::F16);
  require_dtype(out, op, "out", DType::F32, DType::BF16, DType::F16);
  const int64_t M = out.size(0), N = out.size(1), K = trans_a ? a.size(0) : a.size(1);
  if (M == 0 || N == 0) return;
  if (K == 0) {  // out = beta·out
    if (beta != 1.0f) throw_error(ErrorKind::Unsupported, op, ": an empty inner dimension with beta != 1");
    return;
  }
  GemmKey key{M,
              N,
              K,
              trans_a,
              trans_b,
              (int)a.dtype(),
              (int)out.dtype(),
              pointer_alignment(a.raw()),
              pointer_alignment(b.raw()),
              pointer_alignment(out.raw())};
  static std::mutex mu;
  static auto* plans = new std::map<GemmKey, GemmPlan>();
  GemmPlan plan;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = plans->find(key);
    if (it == plans->end()) it = plans->emplace(key, make_gemm_plan(key, a, b, out)).first;
    plan = it->second;
  }
  CudaContext& ctx = context();
  QT_CUBLAS_CHECK(cublasLtMatmul(ctx.lt, plan.desc, &alpha, b.raw(), plan.lb, a.raw(), plan.la, &beta, out.raw(),
                                 plan.lc, out.raw(), plan.lc, &plan.algo, ctx.workspace, ctx.workspace_bytes,
                                 ctx.stream));
}

}  // namespace cuda
}  // namespace qtune
