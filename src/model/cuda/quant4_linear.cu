// 4-bit Linear on the GPU (model/quant_linear.h): quantizing a GPU weight, the forward (fused GEMV for a few
// rows, otherwise dequantize into a reused BF16 buffer + the cuBLASLt GEMM of ops/cuda/linear.cu), and the
// dequantized rows the trainer's backward multiplies with.
#include <mutex>

#include "core/error.h"
#include "model/cuda/quant_linear_cuda.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "quant/quant_cuda.h"

namespace qtune {

namespace {

constexpr int64_t kGemvMaxRows = 4;  // GEMV launches in pairs of rows up to here (each reads W once)

// One BF16 buffer for the dequantized weight of the many-token path, grown to the largest layer and
// reused by every layer (all work runs in order on the one stream).
Tensor dequant_buffer(int64_t O, int64_t I) {
  static std::mutex mu;
  static Tensor* buf = new Tensor();  // never destroyed: tensors may outlive static destruction order
  std::lock_guard<std::mutex> lock(mu);
  if (!buf->defined() || buf->numel() < O * I) {
    *buf = Tensor();  // free the smaller one first
    *buf = Tensor::empty({O * I}, DType::BF16, Device::CUDA);
  }
  return buf->slice0(0, O * I).reshape({O, I});
}

void check_forward(const char* op, const Tensor& out, const Tensor& x, int64_t O, int64_t I,
                   const Tensor* bias) {
  if (!x.is_cuda() || !out.is_cuda() || (bias && !bias->is_cuda()))
    throw_error(ErrorKind::Usage, op, ": the weight is on the GPU; x ", x.describe(), ", out ",
                out.describe(), bias ? ", bias " + bias->describe() : std::string(), " must be too");
  if (x.dtype() != DType::BF16 || (out.dtype() != DType::BF16 && out.dtype() != DType::F32) || x.ndim() < 1 ||
      x.size(-1) != I || out.ndim() < 1 || out.size(-1) != O || x.numel() / I != out.numel() / O)
    throw_error(ErrorKind::Shape, op, ": expected BF16 x [N, ", I, "] and BF16/F32 out [N, ", O, "], got ",
                x.describe(), " and ", out.describe());
  if (bias && bias->numel() != O)
    throw_error(ErrorKind::Shape, op, ": bias ", bias->describe(), " is not [", O, "]");
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

}  // namespace

std::shared_ptr<const Quant4Linear> quantize_linear_4bit_cuda(const Tensor& w, QuantType qt,
                                                              int64_t blocksize, bool double_quant,
                                                              DType compute_dtype) {
  if (compute_dtype != DType::F32 && compute_dtype != DType::BF16 && compute_dtype != DType::F16)
    throw_error(ErrorKind::Usage, "4-bit linear: compute dtype ", dtype_name(compute_dtype),
                " is not F32, BF16 or F16");
  auto l = std::make_shared<Quant4Linear>();
  l->q = quantize_4bit_cuda(w, qt, blocksize, double_quant);
  if (!l->q.nested) l->absmax = l->q.absmax;
  l->compute_dtype = compute_dtype;
  return l;
}

void quant4_dequantize_rows_cuda(Tensor& out, const Quant4Linear& w, int64_t o0, int64_t rows) {
  const char* op = "quant4_dequantize_rows_cuda";
  const int64_t O = w.q.shape[0], I = w.q.shape[1];
  if (!w.on_cuda()) throw_error(ErrorKind::Usage, op, ": the weight's storage is on the CPU");
  if (o0 < 0 || rows < 0 || o0 + rows > O)
    throw_error(ErrorKind::Shape, op, ": rows [", o0, ", ", o0 + rows, ") outside the weight's ", O, " rows");
  if (!out.is_cuda() || out.dtype() != DType::BF16 || out.numel() != rows * I)
    throw_error(ErrorKind::Shape, op, ": out must be a GPU BF16 [", rows, ", ", I, "] tensor, got ",
                out.describe());
  dequantize_4bit_cuda_raw(w.q.packed.data<uint8_t>(), absmax4_view(w.q), o0 * I, rows * I, w.q.blocksize,
                           w.q.quant_type, DType::BF16, out.raw(), cuda::stream(), w.q.dtype,
                           w.compute_dtype);
}

void quant4_linear_forward_cuda(Tensor& out, const Tensor& x, const Quant4Linear& w, const Tensor* bias) {
  const char* op = "quant4_linear_forward";
  const int64_t O = w.q.shape[0], I = w.q.shape[1];
  if (!w.on_cuda())
    throw_error(ErrorKind::Usage, op,
                ": x is on the GPU but the 4-bit weight is on the CPU (move it with "
                "quant4_linear_to)");
  check_forward(op, out, x, O, I, bias);
  const int64_t N = x.numel() / I;
  if (N == 0 || O == 0) return;
  if (N <= kGemvMaxRows && gemv_4bit_supported(I, w.q.packed.raw()) && aligned16(x.raw())) {
    Gemv4Args a;
    a.packed = w.q.packed.data<uint8_t>();
    a.absmax = absmax4_view(w.q);
    a.blocksize = w.q.blocksize;
    a.quant_type = w.q.quant_type;
    a.out_dtype = out.dtype();
    a.bias = bias ? bias->raw() : nullptr;
    a.bias_dtype = bias ? bias->dtype() : DType::BF16;
    a.O = O;
    a.I = I;
    a.weights_static = true;  // quantized at load: no kernel of a forward writes them
    const size_t out_row = dtype_nbytes(out.dtype(), O), x_row = dtype_nbytes(x.dtype(), I);
    for (int64_t n0 = 0; n0 < N; n0 += 2) {
      a.rows = (int)std::min<int64_t>(2, N - n0);
      a.x = static_cast<const char*>(x.raw()) + n0 * x_row;
      a.out = static_cast<char*>(out.raw()) + n0 * out_row;
      gemv_4bit_cuda(a, cuda::stream());
    }
    return;
  }
  Tensor wd = dequant_buffer(O, I);  // [O, I] BF16
  quant4_dequantize_rows_cuda(wd, w, 0, O);
  cuda::linear_forward(out, x, wd, bias);
}

}  // namespace qtune
