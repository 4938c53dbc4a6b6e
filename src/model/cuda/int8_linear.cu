// LLM.int8 Linear on the GPU (model/quant_linear.h): quantizing a GPU weight, the forward and the dequantized
// rows. Forward, in launches on the ops stream (no host synchronisation, so it can sit in a CUDA graph):
//   flags = 0;  qa, sa = row-wise int8 of f16(x), flags of outlier columns    [N, K], [N], [K]
//   cols, count = the flagged columns in order                                 (threshold > 0)
//   N <= 4:  int8 GEMV (__dp4a) with the epilogue fused
//   else:    acc = qa · qbᵀ by cuBLASLt (int8 in, int32 out, TN)               [N, O]
//            gather the outlier weight columns (first kOutlierCap), epilogue → out
// cuBLASLt's int8 kernels need K and O multiples of 4; other shapes (and a missing algorithm) use the GEMV
// four rows at a time.
#include <map>
#include <mutex>
#include <tuple>

#include "core/error.h"
#include "model/cuda/quant_linear_cuda.h"
#include "ops/cuda/cuda_context.h"
#include "quant/quant_cuda.h"

namespace qtune {

namespace {

constexpr int kOutlierCap = 64;  // outlier columns whose weights are gathered (more: read in place)

struct Int8Plan {
  bool ok = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo;
};

std::mutex plan_mu;
std::map<std::tuple<int64_t, int64_t, int64_t>, Int8Plan>& plans() {
  static auto* m = new std::map<std::tuple<int64_t, int64_t, int64_t>, Int8Plan>();
  return *m;
}

// accᵀ[O, N] = (qb as col-major [K, O])ᵀ · (qa as col-major [K, N]), int32 compute and output.
Int8Plan make_plan(int64_t N, int64_t K, int64_t O) {
  cuda::CudaContext& ctx = cuda::context();
  Int8Plan p;
  QT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32I, CUDA_R_32I));
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8I, K, O, K));
  QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8I, K, N, K));
  QT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32I, O, N, O));
  cublasLtMatmulPreference_t pref;
  QT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = ctx.workspace_bytes;
  QT_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  cublasLtMatmulHeuristicResult_t res;
  int count = 0;
  cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(ctx.lt, p.desc, p.a, p.b, p.c, p.c, pref, 1, &res, &count);
  cublasLtMatmulPreferenceDestroy(pref);
  p.ok = st == CUBLAS_STATUS_SUCCESS && count > 0;
  if (p.ok) p.algo = res.algo;
  return p;
}

// acc = qa · qbᵀ through cuBLASLt; false when it has no algorithm for the shape.
bool int8_gemm_lt(int32_t* acc, const int8_t* qa, const int8_t* qb, int64_t N, int64_t K, int64_t O) {
  if (K % 4 != 0 || O % 4 != 0 || N > 0x7fffffff || K > 0x7fffffff || O > 0x7fffffff) return false;
  std::lock_guard<std::mutex> lock(plan_mu);
  auto key = std::make_tuple(N, K, O);
  auto it = plans().find(key);
  if (it == plans().end()) it = plans().emplace(key, make_plan(N, K, O)).first;
  const Int8Plan& p = it->second;
  if (!p.ok) return false;
  cuda::CudaContext& ctx = cuda::context();
  int32_t alpha = 1, beta = 0;
  QT_CUBLAS_CHECK(cublasLtMatmul(ctx.lt, p.desc, &alpha, qb, p.a, qa, p.b, &beta, acc, p.c, acc, p.c, &p.algo,
                                 ctx.workspace, ctx.workspace_bytes, ctx.stream));
  return true;
}

}  // namespace

std::shared_ptr<const Int8Linear> quantize_linear_8bit_cuda(const Tensor& w, float threshold) {
  if (!w.is_cuda() || w.ndim() != 2)
    throw_error(ErrorKind::Shape, "quantize_linear_8bit: expected a GPU weight [O, I], got ", w.describe());
  const int64_t O = w.size(0), I = w.size(1);
  auto l = std::make_shared<Int8Linear>();
  l->w.q = Tensor::empty({O, I}, DType::I8, Device::CUDA);
  l->w.scale = Tensor::empty({O}, DType::F32, Device::CUDA);
  // bitsandbytes' Int8Params: an f16 copy of the weight, row-wise, no outliers.
  int8_quant_rows_cuda(w.raw(), w.dtype(), O, I, 0.0f, true, l->w.q.data<int8_t>(), l->w.scale.data<float>(),
                       nullptr, cuda::stream());
  l->threshold = threshold;
  return l;
}

void int8_dequantize_rows_cuda(Tensor& out, const Int8Linear& w, int64_t o0, int64_t rows) {
  const char* op = "int8_dequantize_rows_cuda";
  if (!w.on_cuda()) throw_error(ErrorKind::Usage, op, ": the weight's storage is on the CPU");
  const int64_t O = w.w.q.size(0), I = w.w.q.size(1);
  if (o0 < 0 || rows < 0 || o0 + rows > O)
    throw_error(ErrorKind::Shape, op, ": rows [", o0, ", ", o0 + rows, ") outside the weight's ", O, " rows");
  if (!out.is_cuda() || out.dtype() != DType::BF16 || out.numel() != rows * I)
    throw_error(ErrorKind::Shape, op, ": out must be a GPU BF16 [", rows, ", ", I, "] tensor, got ",
                out.describe());
  int8_dequantize_rows_cuda_raw(w.w.q.data<int8_t>(), w.w.scale.data<float>(), o0, rows, I, DType::BF16,
                                out.raw(), cuda::stream());
}

void int8_linear_forward_cuda(Tensor& out, const Tensor& x, const Int8Linear& w, const Tensor* bias) {
  const char* op = "int8_linear_forward";
  if (!w.on_cuda())
    throw_error(ErrorKind::Usage, op,
                ": x is on the GPU but the int8 weight is on the CPU (move it with "
                "int8_linear_to)");
  const int64_t O = w.w.q.size(0), K = w.w.q.size(1);
  if (!x.is_cuda() || !out.is_cuda() || (bias && !bias->is_cuda()))
    throw_error(ErrorKind::Usage, op, ": x ", x.describe(), " and out ", out.describe(),
                " must be on the GPU");
  if ((x.dtype() != DType::BF16 && x.dtype() != DType::F32) ||
      (out.dtype() != DType::BF16 && out.dtype() != DType::F32) || x.ndim() < 1 || x.size(-1) != K ||
      out.ndim() < 1 || out.size(-1) != O || x.numel() / K != out.numel() / O)
    throw_error(ErrorKind::Shape, op, ": expected BF16/F32 x [N, ", K, "] and out [N, ", O, "], got ",
                x.describe(), " and ", out.describe());
  if (bias && bias->numel() != O)
    throw_error(ErrorKind::Shape, op, ": bias ", bias->describe(), " is not [", O, "]");
  const int64_t N = x.numel() / K;
  if (N == 0 || O == 0) return;
  cudaStream_t s = cuda::stream();
  Tensor flags = Tensor::empty({K}, DType::U8, Device::CUDA);   // [K]
  Tensor cols = Tensor::empty({K}, DType::I32, Device::CUDA);   // [K]
  Tensor count = Tensor::empty({1}, DType::I32, Device::CUDA);  // [1]
  Tensor qa = Tensor::empty({N, K}, DType::I8, Device::CUDA);   // [N, K]
  Tensor sa = Tensor::empty({N}, DType::F32, Device::CUDA);     // [N]
  QT_CUDA_CHECK(cudaMemsetAsync(flags.raw(), 0, (size_t)K, s));
  QT_CUDA_CHECK(cudaMemsetAsync(count.raw(), 0, sizeof(int32_t), s));
  const float thr = w.threshold;
  int8_quant_rows_cuda(x.raw(), x.dtype(), N, K, thr, true, qa.data<int8_t>(), sa.data<float>(),
                       flags.data<uint8_t>(), s);
  if (thr > 0.0f)
    int8_outlier_columns_cuda(flags.data<uint8_t>(), K, cols.data<int32_t>(), count.data<int32_t>(), s);

  Int8Epilogue e;
  e.sa = sa.data<float>();
  e.qa = qa.data<int8_t>();
  e.sb = w.w.scale.data<float>();
  e.qb = w.w.q.data<int8_t>();
  e.x = x.raw();
  e.x_dtype = x.dtype();
  e.cols = cols.data<int32_t>();
  e.count = count.data<int32_t>();
  e.bias = bias ? bias->raw() : nullptr;
  e.bias_dtype = bias ? bias->dtype() : DType::F32;
  e.out = out.raw();
  e.out_dtype = out.dtype();
  e.N = N;
  e.K = K;
  e.O = O;
  Tensor acc;
  if (N > 4) {
    acc = Tensor::empty({N, O}, DType::I32, Device::CUDA);  // [N, O]
    if (!int8_gemm_lt(acc.data<int32_t>(), qa.data<int8_t>(), w.w.q.data<int8_t>(), N, K, O)) acc = Tensor();
  }
  if (!acc.defined()) {
    for (int64_t m0 = 0; m0 < N; m0 += 4) int8_gemv_cuda(e, m0, (int)std::min<int64_t>(4, N - m0), s);
    return;
  }
  Tensor wout, qout;
  if (thr > 0.0f) {
    wout = Tensor::empty({kOutlierCap, O}, DType::F32, Device::CUDA);  // [cap, O]
    qout = Tensor::empty({kOutlierCap, O}, DType::I8, Device::CUDA);   // [cap, O]
    int8_gather_outliers_cuda(e, wout.data<float>(), qout.data<int8_t>(), kOutlierCap, s);
    e.wout = wout.data<float>();
    e.qout = qout.data<int8_t>();
    e.cap = kOutlierCap;
  }
  int8_epilogue_cuda(acc.data<int32_t>(), e, s);
}

}  // namespace qtune
