// LLM.int8 Linear on the GPU (model/quant_linear.h): quantizing a GPU weight, the forward and the dequantized
// rows. Forward, in launches on the ops stream (no host synchronisation, so it can sit in a CUDA graph; the
// per-call buffers are one allocation, a kept one for a few rows and inside a capture):
//   N == 1 (decode; K % 16 == 0): all of it in one launch (int8_gemv_row_cuda). Otherwise:
//   qa, sa = row-wise int8 of f16(x), flags of outlier columns                [N, K], [N], [K]
//   N <= 4:  cols, count = the flagged columns; int8 GEMV (__dp4a) with the epilogue fused
//   else:    acc = qa · qbᵀ by cuBLASLt (int8 in, int32 out, TN)               [N, O]
//            cols, count, the outlier weight columns (first kOutlierCap) and each row's qa and x at
//            the first outlier columns gathered (one kernel); epilogue → out
//            With kDenseRows rows or more, outside a graph capture, the host reads the count (while the
//            GEMM runs); past kOutlierCap columns the outliers take bitsandbytes' decomposition instead:
//            the columns gathered densely, their int8 product (to subtract) and their f32 product as
//            cuBLASLt GEMMs, then an element-wise epilogue. Column by column, a random 8B model's down
//            projection (~11,700 outlier columns of 14,336 over 512 tokens) took ~40 ms.
// The outlier kernel runs on a second stream beside the GEMM, which is told to leave kOutlierSms SMs free;
// the epilogue waits for both. cuBLASLt's int8 kernels need K and O multiples of
// 4; other shapes (and a missing algorithm) use the GEMV four rows at a time.
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "core/allocator.h"
#include "core/error.h"
#include "model/cuda/quant_linear_cuda.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
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

// SMs the GEMM leaves to the outlier kernel, which runs beside it on a second stream (cuBLASLt's SM count
// target). cuBLASLt's persistent int8 kernel covers 2048 × 4096 in 512 tiles: 4 waves on 128 SMs as on 132.
constexpr int kOutlierSms = 4;
// The outlier kernel's blocks there: one of 1024 threads. Four such blocks took SMs that the GEMM's
// 2-CTA clusters wanted (O = 4096 in a CUDA graph: 95.7 µs against 88.3 with one block, H200).
constexpr int kOutlierBlocks = 1;
// Rows from which the forward reads the outlier count on the host, to pick the decomposition
// (bench/NOTES.md, session 16: the wait cost 0-6 us per forward at 2048 rows, beside 85-230 us).
constexpr int64_t kDenseRows = 64;
constexpr int64_t kGemvRows = 4;  // up to here the int8 GEMV, not cuBLASLt

using PlanKey = std::tuple<int64_t, int64_t, int64_t, int>;
std::mutex plan_mu;
std::map<PlanKey, Int8Plan>& plans() {
  static auto* m = new std::map<PlanKey, Int8Plan>();
  return *m;
}

// accᵀ[O, N] = (qb as col-major [K, O])ᵀ · (qa as col-major [K, N]), int32 compute and output, on all SMs
// but `spare`.
Int8Plan make_plan(int64_t N, int64_t K, int64_t O, int spare) {
  cuda::CudaContext& ctx = cuda::context();
  Int8Plan p;
  QT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32I, CUDA_R_32I));
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (spare > 0 && ctx.num_sms > 2 * spare) {
    const int32_t target = ctx.num_sms - spare;
    QT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &target,
                                                   sizeof(target)));
  }
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

// The forward's column flags [K] and the outlier kernel's block counter, zero between forwards: the outlier
// kernel clears both once it has listed the columns, so no memset precedes the row quantization. One buffer
// for the context's stream (forwards on it run one at a time), grown to the largest K; a grown-out buffer is
// kept, since queued kernels may still use it.
uint8_t* outlier_flags(int64_t K, uint32_t** counter) {
  static std::mutex mu;
  static std::vector<Tensor>* bufs = new std::vector<Tensor>();
  static int64_t cap = 0;
  std::lock_guard<std::mutex> lock(mu);
  const int64_t counter_at = (K + 15) / 16 * 16;
  if (K > cap) {
    bufs->push_back(Tensor::empty({counter_at + 16}, DType::U8, Device::CUDA));
    QT_CUDA_CHECK(cudaMemsetAsync(bufs->back().raw(), 0, (size_t)(counter_at + 16), cuda::stream()));
    cap = K;
  }
  uint8_t* b = static_cast<uint8_t*>(bufs->back().raw());
  *counter = reinterpret_cast<uint32_t*>(b + (cap + 15) / 16 * 16);
  return b;
}

// The plan for the shape, or null when cuBLASLt's int8 GEMM does not take it.
const Int8Plan* int8_plan(int64_t N, int64_t K, int64_t O, int spare = 0) {
  if (K % 4 != 0 || O % 4 != 0 || N > 0x7fffffff || K > 0x7fffffff || O > 0x7fffffff) return nullptr;
  std::lock_guard<std::mutex> lock(plan_mu);
  const PlanKey key = std::make_tuple(N, K, O, spare);
  auto it = plans().find(key);
  if (it == plans().end()) it = plans().emplace(key, make_plan(N, K, O, spare)).first;
  return it->second.ok ? &it->second : nullptr;
}

// The second stream of the forward and the events that fork it from the context's stream and join it back
// (capturable: a CUDA graph records the fork and the join as edges).
struct SideStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t fork = nullptr, join = nullptr, listed = nullptr;
  int* count_host = nullptr;  // pinned: the outlier count, for the host
};
const SideStream& side_stream() {
  static std::once_flag once;
  static SideStream side;
  std::call_once(once, [] {
    QT_CUDA_CHECK(cudaStreamCreateWithFlags(&side.stream, cudaStreamNonBlocking));
    QT_CUDA_CHECK(cudaEventCreateWithFlags(&side.fork, cudaEventDisableTiming));
    QT_CUDA_CHECK(cudaEventCreateWithFlags(&side.join, cudaEventDisableTiming));
    QT_CUDA_CHECK(cudaEventCreateWithFlags(&side.listed, cudaEventDisableTiming));
    side.count_host = static_cast<int*>(host_pinned_malloc(sizeof(int)));
  });
  return side;
}

void int8_gemm_run(const Int8Plan& p, int32_t* acc, const int8_t* qa, const int8_t* qb) {
  cuda::CudaContext& ctx = cuda::context();
  const int32_t alpha = 1, beta = 0;
  QT_CUBLAS_CHECK(cublasLtMatmul(ctx.lt, p.desc, &alpha, qb, p.a, qa, p.b, &beta, acc, p.c, acc, p.c, &p.algo,
                                 ctx.workspace, ctx.workspace_bytes, ctx.stream));
}

// The per-call buffers of a forward captured into a CUDA graph: memory that stays the graph's for every
// replay, so never returned to the caching allocator (where a tensor allocated later could take it). One
// buffer for the context's stream, grown to the largest request; a grown-out buffer is kept, since graphs
// may still use it. Decode-sized forwards (a few rows) use it eagerly too, so DecodeStep's eager first step
// sizes it before its capture; larger eager forwards take a buffer of their own.
char* capture_buffer(size_t bytes) {
  static std::mutex mu;
  static std::vector<Tensor>* bufs = new std::vector<Tensor>();
  static size_t cap = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (bytes > cap) {
    bufs->push_back(Tensor::empty({(int64_t)bytes}, DType::U8, Device::CUDA));
    cap = bytes;
  }
  return static_cast<char*>(bufs->back().raw());
}

// out for n > kOutlierCap outlier columns (e.cols on the device, listed): bitsandbytes' decomposition with
// the outlier products as GEMMs (quant_cuda.h, int8_gather_columns_cuda). False, with nothing queued, when
// cuBLASLt has no int8 GEMM for the gathered shape.
bool dense_outliers(const int32_t* acc, const Int8Epilogue& e, int64_t n, cudaStream_t s) {
  const int64_t N = e.N, O = e.O, np = (n + 7) / 8 * 8;
  const Int8Plan* p = int8_plan(N, np, O);
  if (!p) return false;
  const DType gd = e.x_dtype == DType::F32 ? DType::F32 : DType::BF16;  // x's values exactly
  Tensor xg = Tensor::empty({N, np}, gd, Device::CUDA), wqf = Tensor::empty({O, np}, gd, Device::CUDA);
  Tensor qag = Tensor::empty({N, np}, DType::I8, Device::CUDA),
         wq8 = Tensor::empty({O, np}, DType::I8, Device::CUDA);
  Tensor corr = Tensor::empty({N, O}, DType::I32, Device::CUDA),
         fsum = Tensor::empty({N, O}, DType::F32, Device::CUDA);
  int8_gather_columns_cuda(e, n, np, xg.raw(), gd, qag.data<int8_t>(), wq8.data<int8_t>(), wqf.raw(), s);
  int8_gemm_run(*p, corr.data<int32_t>(), qag.data<int8_t>(), wq8.data<int8_t>());
  cuda::linear_forward(fsum, xg, wqf);
  int8_epilogue_dense_cuda(acc, corr.data<int32_t>(), fsum.data<float>(), e, s);
  return true;
}

}  // namespace

bool int8_gemm_cuda(int32_t* acc, const int8_t* qa, const int8_t* qb, int64_t N, int64_t K, int64_t O) {
  const Int8Plan* p = int8_plan(N, K, O);
  if (p) int8_gemm_run(*p, acc, qa, qb);
  return p != nullptr;
}

std::shared_ptr<const Int8Linear> quantize_linear_8bit_cuda(const Tensor& w, float threshold) {
  if (!w.is_cuda() || w.ndim() != 2)
    throw_error(ErrorKind::Shape, "quantize_linear_8bit: expected a GPU weight [O, I], got ", w.describe());
  const int64_t O = w.size(0), I = w.size(1);
  auto l = std::make_shared<Int8Linear>();
  l->w.q = Tensor::empty({O, I}, DType::I8, Device::CUDA);
  l->w.scale = Tensor::empty({O}, DType::F32, Device::CUDA);
  // bitsandbytes' Int8Params on a GPU: an f16 copy of the weight, row-wise, no outliers, its CUDA scale.
  int8_quant_rows_cuda(w.raw(), w.dtype(), O, I, 0.0f, true, l->w.q.data<int8_t>(), l->w.scale.data<float>(),
                       nullptr, cuda::stream(), BnbBackend::Cuda);
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

namespace {

// The forward's argument checks; x's rows.
int64_t checked_rows(const Tensor& out, const Tensor& x, const Int8Linear& w, const Tensor* bias) {
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
  return x.numel() / K;
}

// The weight's part of the one-launch row (int8_gemv_row_cuda).
Int8Epilogue row_part(Tensor& out, const Tensor& x, const Int8Linear& w, const Tensor* bias) {
  Int8Epilogue e;
  e.sb = w.w.scale.data<float>();
  e.qb = w.w.q.data<int8_t>();
  e.x = x.raw();
  e.x_dtype = x.dtype();
  e.bias = bias ? bias->raw() : nullptr;
  e.bias_dtype = bias ? bias->dtype() : DType::F32;
  e.out = out.raw();
  e.out_dtype = out.dtype();
  e.N = 1;
  e.K = w.w.q.size(1);
  e.O = w.w.q.size(0);
  return e;
}

}  // namespace

void int8_linear_forward_multi_cuda(const std::vector<Tensor*>& outs, const Tensor& x,
                                    const std::vector<const Int8Linear*>& ws,
                                    const std::vector<const Tensor*>& biases) {
  if (outs.size() != ws.size() || biases.size() != ws.size())
    throw_error(ErrorKind::Usage, "int8_linear_forward_multi: ", outs.size(), " outputs, ", ws.size(),
                " weights and ", biases.size(), " biases");
  // One launch when x is one row the row kernel takes and the weights share its length, their threshold
  // and the dtypes of their outputs and biases; else one forward each.
  bool one = !ws.empty() && ws.size() <= (size_t)kInt8RowMaxParts;
  for (size_t j = 0; one && j < ws.size(); j++) {
    const Int8Linear& w = *ws[j];
    one = w.on_cuda() && w.threshold == ws[0]->threshold && w.w.q.size(1) == ws[0]->w.q.size(1) &&
          outs[j]->dtype() == outs[0]->dtype() &&
          (!biases[j] || !biases[0] || biases[j]->dtype() == biases[0]->dtype());
  }
  one = one && x.is_cuda() && x.numel() == ws[0]->w.q.size(1) &&
        int8_gemv_row_supported(x.numel(), x.raw(), x.dtype());
  if (!one) {
    for (size_t j = 0; j < ws.size(); j++) int8_linear_forward_cuda(*outs[j], x, *ws[j], biases[j]);
    return;
  }
  std::vector<Int8Epilogue> parts;
  for (size_t j = 0; j < ws.size(); j++) {
    checked_rows(*outs[j], x, *ws[j], biases[j]);
    parts.push_back(row_part(*outs[j], x, *ws[j], biases[j]));
  }
  int8_gemv_row_cuda(parts, ws[0]->threshold, cuda::stream());
}

bool int8_gemv_norm_ok(const std::vector<const Int8Linear*>& ws, const Tensor& norm_w) {
  if (ws.empty() || ws.size() > (size_t)kInt8RowMaxParts) return false;
  const int64_t K = ws[0]->w.q.size(1);
  for (const Int8Linear* w : ws)
    if (!w->on_cuda() || w->w.q.size(1) != K || w->threshold != ws[0]->threshold) return false;
  return int8_gemv_row_norm_supported(K) && norm_w.is_cuda() && norm_w.dtype() == DType::BF16 &&
         norm_w.numel() == K && (reinterpret_cast<uintptr_t>(norm_w.raw()) & 15) == 0;
}

bool int8_linear_forward_norm_cuda(const std::vector<Tensor*>& outs, const Tensor& x, const Tensor* x_add,
                                   const Tensor& norm_w, float eps, Tensor* res_out,
                                   const std::vector<const Int8Linear*>& ws,
                                   const std::vector<const Tensor*>& biases) {
  if (!int8_gemv_norm_ok(ws, norm_w) || outs.size() != ws.size() || biases.size() != ws.size()) return false;
  const int64_t K = ws[0]->w.q.size(1);
  auto row_ok = [&](const Tensor* t) {
    return !t || (t->is_cuda() && t->dtype() == DType::BF16 && t->numel() == K &&
                  (reinterpret_cast<uintptr_t>(t->raw()) & 15) == 0);
  };
  if (!row_ok(&x) || !row_ok(x_add) || !row_ok(res_out) ||
      (res_out && (res_out->raw() == x.raw() || (x_add && res_out->raw() == x_add->raw()))))
    return false;
  std::vector<Int8Epilogue> parts;
  for (size_t j = 0; j < ws.size(); j++) {
    checked_rows(*outs[j], x, *ws[j], biases[j]);
    if (outs[j]->dtype() != outs[0]->dtype() ||
        (biases[j] && biases[0] && biases[j]->dtype() != biases[0]->dtype()))
      return false;
    parts.push_back(row_part(*outs[j], x, *ws[j], biases[j]));
  }
  Int8RowInput n;
  n.x_add = x_add ? x_add->raw() : nullptr;
  n.norm_w = norm_w.raw();
  n.res_out = res_out ? res_out->raw() : nullptr;
  n.eps = eps;
  int8_gemv_row_cuda(parts, ws[0]->threshold, cuda::stream(), &n);
  return true;
}

bool int8_gemv_glu_ok(const Int8Linear& w) {
  return w.on_cuda() && int8_gemv_row_glu_supported(w.w.q.size(1));
}

bool int8_linear_forward_glu_cuda(Tensor& out, const Tensor& gate, const Tensor& up, const Int8Linear& w,
                                  const Tensor* bias) {
  const int64_t K = w.w.q.size(1);
  auto row_ok = [&](const Tensor& t) {
    return t.is_cuda() && t.dtype() == DType::BF16 && t.numel() == K &&
           (reinterpret_cast<uintptr_t>(t.raw()) & 15) == 0;
  };
  if (!int8_gemv_glu_ok(w) || !row_ok(gate) || !row_ok(up)) return false;
  if (checked_rows(out, gate, w, bias) != 1) return false;
  Int8RowInput in;
  in.glu_up = up.raw();
  int8_gemv_row_cuda({row_part(out, gate, w, bias)}, w.threshold, cuda::stream(), &in);
  return true;
}

void int8_linear_forward_cuda(Tensor& out, const Tensor& x, const Int8Linear& w, const Tensor* bias) {
  const int64_t N = checked_rows(out, x, w, bias);
  const int64_t O = w.w.q.size(0), K = w.w.q.size(1);
  if (N == 0 || O == 0) return;
  cudaStream_t s = cuda::stream();
  const float thr = w.threshold;
  if (N == 1 && int8_gemv_row_supported(K, x.raw(), x.dtype())) {  // decode: one launch
    int8_gemv_row_cuda({row_part(out, x, w, bias)}, thr, s);
    return;
  }
  const Int8Plan* plan = N > kGemvRows ? int8_plan(N, K, O, thr > 0.0f ? kOutlierSms : 0) : nullptr;
  const int cap = plan && thr > 0.0f ? kOutlierCap : 0;
  const int64_t staged = plan && thr > 0.0f ? 8 : 0;  // quant_cuda.h: qa_c / x_c width
  // One allocation for the per-call buffers, each at a 256-byte boundary.
  size_t bytes = 0;
  auto take = [&](int64_t n) {
    const size_t at = bytes;
    bytes += ((size_t)n + 255) / 256 * 256;
    return at;
  };
  const size_t at_qa = take(N * K), at_sa = take(N * 4), at_cols = take(K * 4), at_count = take(4),
               at_acc = plan ? take(N * O * 4) : 0, at_wout = take((int64_t)cap * O * 4),
               at_qout = take(cap > 0 ? O * 8 : 0), at_qac = take(N * staged), at_xc = take(N * staged * 4);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  QT_CUDA_CHECK(cudaStreamIsCapturing(s, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  const bool kept = capturing || N <= kGemvRows;
  Tensor buf = kept ? Tensor() : Tensor::empty({(int64_t)bytes}, DType::U8, Device::CUDA);
  char* b = kept ? capture_buffer(bytes) : static_cast<char*>(buf.raw());
  int8_t* qa = reinterpret_cast<int8_t*>(b + at_qa);                        // [N, K]
  float* sa = reinterpret_cast<float*>(b + at_sa);                          // [N]
  int32_t* cols = reinterpret_cast<int32_t*>(b + at_cols);                  // [K]
  int32_t* count = reinterpret_cast<int32_t*>(b + at_count);                // [1]
  int32_t* acc = reinterpret_cast<int32_t*>(b + at_acc);                    // [N, O]
  float* wout = reinterpret_cast<float*>(b + at_wout);                      // [cap, O]
  int8_t* qout = reinterpret_cast<int8_t*>(b + at_qout);                    // [O, 8]
  int8_t* qa_c = staged ? reinterpret_cast<int8_t*>(b + at_qac) : nullptr;  // [N, 8]
  float* x_c = staged ? reinterpret_cast<float*>(b + at_xc) : nullptr;      // [N, 8]

  uint32_t* flags_done = nullptr;
  uint8_t* flags = thr > 0.0f ? outlier_flags(K, &flags_done) : nullptr;  // [K], zero
  // Set up before the row quantization sets flags: a throw between it and the listing that clears them
  // would leave them set for the next forward.
  const bool fork = plan && thr > 0.0f;
  const SideStream* side = fork ? &side_stream() : nullptr;
  int8_quant_rows_cuda(x.raw(), x.dtype(), N, K, thr, true, qa, sa, flags, s, BnbBackend::Cpu);
  if (fork) QT_CUDA_CHECK(cudaEventRecord(side->fork, s));
  if (plan) int8_gemm_run(*plan, acc, qa, w.w.q.data<int8_t>());

  Int8Epilogue e;
  e.sa = sa;
  e.qa = qa;
  e.sb = w.w.scale.data<float>();
  e.qb = w.w.q.data<int8_t>();
  e.x = x.raw();
  e.x_dtype = x.dtype();
  e.cols = cols;
  e.count = thr > 0.0f ? count : nullptr;
  e.wout = wout;
  e.qout = qout;
  e.cap = cap;
  e.qa_c = qa_c;
  e.x_c = x_c;
  e.bias = bias ? bias->raw() : nullptr;
  e.bias_dtype = bias ? bias->dtype() : DType::F32;
  e.out = out.raw();
  e.out_dtype = out.dtype();
  e.N = N;
  e.K = K;
  e.O = O;
  const bool read_count = fork && N >= kDenseRows && !capturing;
  if (fork) {  // beside the GEMM, on an SM it leaves free
    QT_CUDA_CHECK(cudaStreamWaitEvent(side->stream, side->fork, 0));
    int8_outliers_cuda(flags, e, cols, count, wout, qout, cap, qa_c, x_c, flags_done, kOutlierBlocks,
                       side->stream);
    if (read_count) {
      QT_CUDA_CHECK(
          cudaMemcpyAsync(side->count_host, count, sizeof(int), cudaMemcpyDeviceToHost, side->stream));
      QT_CUDA_CHECK(cudaEventRecord(side->listed, side->stream));
    }
    QT_CUDA_CHECK(cudaEventRecord(side->join, side->stream));
    QT_CUDA_CHECK(cudaStreamWaitEvent(s, side->join, 0));
  } else if (thr > 0.0f) {
    int8_outliers_cuda(flags, e, cols, count, wout, qout, cap, qa_c, x_c, flags_done, 0, s);
  }
  if (read_count) {
    QT_CUDA_CHECK(cudaEventSynchronize(side->listed));
    if (*side->count_host > cap && dense_outliers(acc, e, *side->count_host, s)) return;
  }
  if (plan)
    int8_epilogue_cuda(acc, e, s);
  else
    for (int64_t m0 = 0; m0 < N; m0 += 4) int8_gemv_cuda(e, m0, (int)std::min<int64_t>(4, N - m0), s);
}

}  // namespace qtune
