// CPU GEMMs: out = alpha·op(a)·op(b) + beta·out through OpenBLAS sgemm (row-major), split into one block
// of output rows or columns per OpenMP thread, each block a single-threaded sgemm call (sgemv for one row).
// The Linear layer is the case out[N, O] = x[N, I]·w[O, I]ᵀ (+ bias).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <mutex>

#include "ops/cpu/cpu_ops.h"

namespace qtune {
namespace cpu {

static void blas_single_thread() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

// c[M, N] = alpha·op(a)·op(b) + beta·c, row-major, split over threads along M or N (whichever is larger
// relative to a minimum block), blocks a multiple of 16.
static void sgemm_parallel(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* a,
                           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  blas_single_thread();
  if (M == 0 || N == 0) return;
  auto gemm = [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    // op(a) rows m0..m1: a + m0*lda (no transpose) or a + m0 (transposed, a is [K, M]).
    const float* ab = ta ? a + m0 : a + m0 * lda;
    // op(b) cols n0..n1: b + n0 (no transpose) or b + n0*ldb (transposed, b is [N, K]).
    const float* bb = tb ? b + n0 * ldb : b + n0;
    if (m1 - m0 == 1) {  // one row (decode): GEMV streams the weight ~3x faster than OpenBLAS's M=1 GEMM
      int inc = ta ? (int)lda : 1;  // op(a) row: a contiguous row, or a column of a [K, M]
      if (tb)                       // c[n] = Σ_k b[n, k]·a[k]
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)(n1 - n0), (int)K, alpha, bb, (int)ldb, ab, inc, beta,
                    c + m0 * ldc + n0, 1);
      else  // c[n] = Σ_k b[k, n]·a[k]
        cblas_sgemv(CblasRowMajor, CblasTrans, (int)K, (int)(n1 - n0), alpha, bb, (int)ldb, ab, inc, beta,
                    c + m0 * ldc + n0, 1);
      return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)(m1 - m0),
                (int)(n1 - n0), (int)K, alpha, ab, (int)lda, bb, (int)ldb, beta, c + m0 * ldc + n0, (int)ldc);
  };
  int nt = num_threads();
  double flops = 2.0 * M * N * K;
  if (nt == 1 || flops < 4e6) return gemm(0, M, 0, N);  // under ~0.5 ms on one core: not worth a split
  bool split_n = N >= M;  // split the longer side: decode (M = 1) splits the weight's rows
  int64_t len = split_n ? N : M;
  int64_t block = std::max<int64_t>(16, (len + nt - 1) / nt);
  block = (block + 15) / 16 * 16;
  int64_t nblocks = (len + block - 1) / block;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < nblocks; i++) {
    int64_t s = i * block, e = std::min(len, s + block);
    if (split_n)
      gemm(0, M, s, e);
    else
      gemm(s, e, 0, N);
  }
}

void linear_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias) {
  int64_t O = w.size(0), I = w.size(1), N = x.numel() / I;
  float* y = out.data<float>();  // [N, O]
  sgemm_parallel(false, true, N, O, I, 1.0f, x.data<float>(), I, w.data<float>(), I, 0.0f, y, O);
  if (!bias) return;
  const float* bv = bias->data<float>();  // [O]
#pragma omp parallel for schedule(static) if (N * O >= kParallelMinWork)
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < O; o++) y[n * O + o] += bv[o];
}

void matmul(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, float alpha,
            float beta) {
  int64_t M = out.size(0), N = out.size(1);
  int64_t K = trans_a ? a.size(0) : a.size(1);
  sgemm_parallel(trans_a, trans_b, M, N, K, alpha, a.data<float>(), a.size(1), b.data<float>(), b.size(1),
                 beta, out.data<float>(), N);
}

}  // namespace cpu
}  // namespace qtune
