// 4-bit Linear on the GPU (model/quant_linear.h): quantizing a GPU weight, the forward (fused GEMV for a few
// rows, otherwise dequantize into a reused BF16 buffer + the cuBLASLt GEMM of ops/cuda/linear.cu), and the
// dequantized rows the trainer's backward multiplies with.
#include <algorithm>
#include <mutex>
#include <vector>

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

namespace {

// The GEMV's arguments for w, or false when the GEMV does not take it (then the dequantize + GEMM path).
bool gemv_args(Gemv4Args* a, const Tensor& out, const Tensor& x, const Quant4Linear& w, const Tensor* bias) {
  const int64_t O = w.q.shape[0], I = w.q.shape[1];
  if (x.numel() / I > kGemvMaxRows || !gemv_4bit_supported(I, w.q.packed.raw()) || !aligned16(x.raw()))
    return false;
  a->packed = w.q.packed.data<uint8_t>();
  a->absmax = absmax4_view(w.q);
  a->blocksize = w.q.blocksize;
  a->quant_type = w.q.quant_type;
  a->out_dtype = out.dtype();
  a->bias = bias ? bias->raw() : nullptr;
  a->bias_dtype = bias ? bias->dtype() : DType::BF16;
  a->O = O;
  a->I = I;
  a->weights_static = true;  // quantized at load: no kernel of a forward writes them
  return true;
}

// Whether parts[j] can share one launch with parts[0] (gemv_4bit_cuda_parts' conditions).
bool same_layout(const Gemv4Args& a, const Gemv4Args& b) {
  return b.I == a.I && b.blocksize == a.blocksize && b.quant_type == a.quant_type &&
         b.out_dtype == a.out_dtype && (b.absmax.absmax == nullptr) == (a.absmax.absmax == nullptr);
}

// The launches for rows [0, N) of x in pairs, for weights that take the GEMV with the same layout.
void gemv_rows(std::vector<Gemv4Args> parts, const std::vector<Tensor*>& outs, const Tensor& x, int64_t N) {
  const size_t x_row = dtype_nbytes(x.dtype(), x.size(-1));
  for (int64_t n0 = 0; n0 < N; n0 += 2) {
    for (size_t j = 0; j < parts.size(); j++) {
      parts[j].rows = (int)std::min<int64_t>(2, N - n0);
      parts[j].x = static_cast<const char*>(x.raw()) + n0 * x_row;
      parts[j].out = static_cast<char*>(outs[j]->raw()) + n0 * dtype_nbytes(outs[j]->dtype(), parts[j].O);
    }
    gemv_4bit_cuda_parts(parts, cuda::stream());
  }
}

}  // namespace

void quant4_linear_forward_multi_cuda(const std::vector<Tensor*>& outs, const Tensor& x,
                                      const std::vector<const Quant4Linear*>& ws,
                                      const std::vector<const Tensor*>& biases) {
  // One launch when every weight is on the GPU and takes the GEMV with the first one's layout; otherwise
  // one forward each (which also names a weight left on the CPU).
  std::vector<Gemv4Args> parts(ws.size());
  bool one_launch = !ws.empty() && ws.size() <= (size_t)kGemv4MaxParts;
  for (size_t j = 0; j < ws.size() && one_launch; j++) {
    const Quant4Linear& w = *ws[j];
    one_launch = w.on_cuda();
    if (!one_launch) break;
    check_forward("quant4_linear_forward", *outs[j], x, w.q.shape[0], w.q.shape[1], biases[j]);
    one_launch = gemv_args(&parts[j], *outs[j], x, w, biases[j]) && same_layout(parts[0], parts[j]);
  }
  if (one_launch) {
    const int64_t N = x.numel() / parts[0].I;
    if (N > 0) gemv_rows(parts, outs, x, N);
    return;
  }
  for (size_t j = 0; j < ws.size(); j++) quant4_linear_forward_cuda(*outs[j], x, *ws[j], biases[j]);
}

bool quant4_gemv_norm_ok(const Quant4Linear& w, const Tensor& norm_w) {
  const int64_t I = w.q.shape[1];
  return w.on_cuda() && gemv_4bit_supported(I, w.q.packed.raw()) && norm_w.is_cuda() &&
         norm_w.dtype() == DType::BF16 && norm_w.numel() == I && aligned16(norm_w.raw());
}

bool quant4_gemv_glu_ok(const Quant4Linear& gate, const Quant4Linear& up) {
  const Quant4Tensor &g = gate.q, &u = up.q;
  return gate.on_cuda() && up.on_cuda() && g.shape == u.shape && g.blocksize == u.blocksize &&
         g.quant_type == u.quant_type && g.nested == u.nested && g.dtype == u.dtype &&
         gemv_4bit_supported(g.shape[1], g.packed.raw()) && gemv_4bit_supported(u.shape[1], u.packed.raw()) &&
         gemv_4bit_glu_supported(g.shape[1], g.blocksize, 1);
}

bool quant4_linear_forward_norm_cuda(const std::vector<Tensor*>& outs, const Tensor& x, const Tensor* x_add,
                                     const Tensor& norm_w, float eps, Tensor* res_out,
                                     const std::vector<const Quant4Linear*>& ws,
                                     const std::vector<const Tensor*>& biases, Tensor* glu_out) {
  if (ws.empty()) return false;
  if (glu_out) {
    const int64_t O = ws[0]->q.shape[0];
    if (ws.size() != 2 || !quant4_gemv_glu_ok(*ws[0], *ws[1]) || !glu_out->is_cuda() ||
        glu_out->dtype() != DType::BF16 || glu_out->numel() != O || outs[0]->dtype() != DType::BF16 ||
        outs[1]->dtype() != DType::BF16)
      return false;
  }
  const int64_t I = ws[0]->q.shape[1];
  auto row_ok = [&](const Tensor* t) {
    return !t || (t->is_cuda() && t->dtype() == DType::BF16 && t->numel() == I && aligned16(t->raw()));
  };
  if (!row_ok(&x) || !row_ok(x_add) || !row_ok(res_out) ||
      (res_out && (res_out->raw() == x.raw() || (x_add && res_out->raw() == x_add->raw()))))
    return false;
  std::vector<Gemv4Args> parts(ws.size());
  bool one_launch = ws.size() <= (size_t)kGemv4MaxParts;
  for (size_t j = 0; j < ws.size(); j++) {
    const Quant4Linear& w = *ws[j];
    if (w.q.shape[1] != I || !quant4_gemv_norm_ok(w, norm_w)) return false;
    check_forward("quant4_linear_forward_norm", *outs[j], x, w.q.shape[0], I, biases[j]);
    if (!gemv_args(&parts[j], *outs[j], x, w, biases[j])) return false;
    Gemv4Args& a = parts[j];
    a.x = x.raw();
    a.out = outs[j]->raw();
    a.x_add = x_add ? x_add->raw() : nullptr;
    a.norm_w = norm_w.raw();
    a.norm_eps = eps;
    a.res_out = res_out ? res_out->raw() : nullptr;
    a.glu_out = glu_out ? glu_out->raw() : nullptr;
    one_launch = one_launch && same_layout(parts[0], a);
  }
  if (glu_out && !one_launch) return false;
  // Otherwise one launch per weight, each with the norm (block 0 of each writes the same residual).
  if (one_launch)
    gemv_4bit_cuda_parts(parts, cuda::stream());
  else
    for (const Gemv4Args& a : parts) gemv_4bit_cuda(a, cuda::stream());
  return true;
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
  Gemv4Args a;
  if (gemv_args(&a, out, x, w, bias)) {
    gemv_rows({a}, {&out}, x, N);
    return;
  }
  Tensor wd = dequant_buffer(O, I);  // [O, I] BF16
  quant4_dequantize_rows_cuda(wd, w, 0, O);
  cuda::linear_forward(out, x, wd, bias);
}

}  // namespace qtune
