// Linear backward through dense or quantized weights (see linear_backward.h).
#include "train/linear_backward.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/profile.h"
#include "model/quant_linear.h"
#include "ops/matmul.h"
#include "peft/adapter_ops.h"
#include "quant/codebook.h"

namespace qtune {

namespace {

float round_to(DType dt, float f) {
  if (dt == DType::BF16) return bf16_to_f32(f32_to_bf16(f));
  if (dt == DType::F16) return f16_to_f32(f32_to_f16(f));
  return f;
}

// NF4/FP4: value = cd(orig(code[nibble] · absmax[block])), element 2i in the high nibble of byte i.
void dequant4_rows(const Quant4Linear& w, int64_t o0, int64_t rows, int64_t I, float* buf) {
  const uint8_t* packed = w.q.packed.data<uint8_t>();
  const float* absmax = w.absmax.data<float>();
  const float* code = code4(w.q.quant_type);
  const int64_t bs = w.q.blocksize;
  float lut[16];
  int64_t lut_blk = -1;
  for (int64_t p = o0 * I, end = (o0 + rows) * I; p < end; p++) {
    int64_t blk = p / bs;
    if (blk != lut_blk) {
      for (int c = 0; c < 16; c++)
        lut[c] = round_to(w.compute_dtype, round_to(w.q.dtype, code[c] * absmax[blk]));
      lut_blk = blk;
    }
    uint8_t b = packed[p >> 1];
    buf[p - o0 * I] = lut[(p & 1) ? (b & 15) : (b >> 4)];
  }
}

// LLM.int8: value = q · SCB[row] / 127 (bitsandbytes' CB·SCB/127).
void dequant8_rows(const Int8Linear& w, int64_t o0, int64_t rows, int64_t I, float* buf) {
  const int8_t* q = w.w.q.data<int8_t>();
  const float* s = w.w.scale.data<float>();
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < I; i++)
      buf[r * I + i] = ((float)q[(o0 + r) * I + i] * s[o0 + r]) * 7.874015718698502e-3f;
}

}  // namespace

void dequant_weight_rows(const Linear& lin, int64_t o0, int64_t rows, float* buf) {
  int64_t I = lin.in_features();
  if (o0 < 0 || rows < 0 || o0 + rows > lin.out_features())
    throw_error(ErrorKind::Shape, "dequant_weight_rows: rows [", o0, ", ", o0 + rows, ") outside '", lin.name,
                "' with ", lin.out_features(), " output rows");
  if (lin.q4) return dequant4_rows(*lin.q4, o0, rows, I, buf);
  if (lin.q8) return dequant8_rows(*lin.q8, o0, rows, I, buf);
  const float* w = lin.weight.data<float>();
  std::memcpy(buf, w + o0 * I, sizeof(float) * rows * I);
}

// dx[N, I] = dy[N, O]·w[O, I] (beta 0: dx's old contents unread).
static void dx_product(Tensor& dx, const Tensor& dy, const Tensor& w) {
  const int64_t O = w.size(0), I = w.size(1), N = dy.numel() / O;
  Tensor dx2 = dx.reshape({N, I});
  matmul(dx2, dy.reshape({N, O}), w, false, false, 1.0f, 0.0f);
}

static void base_backward(const Linear& lin, Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy,
                          const Tensor& x, bool overwrite_dx) {
  if (!lin.quantized()) {
    if (dx && overwrite_dx) {
      dx_product(*dx, dy, lin.weight);
      dx = nullptr;
    }
    if (dx || dw || db) linear_backward(dx, dw, db, dy, x, lin.weight);
    return;
  }
  if (dw)
    throw_error(ErrorKind::Unsupported, "linear_backward: '", lin.name,
                "' has a quantized weight: its weight gradient is not available (frozen base)");
  if (db) scale_columns_backward(nullptr, db, dy, nullptr, nullptr);  // db += Σ_n dy (a trained bias)
  if (!dx) return;
  const int64_t O = lin.out_features(), I = lin.in_features();
  if (dy.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    // The whole weight dequantized (BF16 [O, I], the values the forward multiplies with) into a buffer
    // that the caching allocator hands back to the next layer, then the dense backward.
    Tensor w = Tensor::empty({O, I}, DType::BF16, Device::CUDA);
    QT_PROFILE("bwd.dequant (in linear)");
    if (lin.q4)
      quant4_dequantize_rows_cuda(w, *lin.q4, 0, O);
    else
      int8_dequantize_rows_cuda(w, *lin.q8, 0, O);
    if (overwrite_dx) return dx_product(*dx, dy, w);
    return linear_backward(dx, nullptr, nullptr, dy, x, w);
#endif
  }
  if (overwrite_dx) dx->set_zero();
  if (dy.dtype() != DType::F32 || dx->dtype() != DType::F32 || dy.device() != Device::CPU ||
      dx->device() != Device::CPU || dy.size(-1) != O || dx->size(-1) != I ||
      dy.numel() / O != dx->numel() / I)
    throw_error(ErrorKind::Shape, "linear_backward: '", lin.name, "' [", O, ", ", I,
                "] needs CPU F32 dy [N, ", O, "] and dx [N, ", I, "], got dy ", dy.describe(), ", dx ",
                dx->describe());
  const int64_t N = dy.numel() / O;
  const int64_t R = std::min<int64_t>(O, std::max<int64_t>(16, (1 << 20) / std::max<int64_t>(1, I)));
  Tensor w_tile = Tensor::empty({R, I}, DType::F32);   // dequantized rows [R, I]
  Tensor dy_tile = Tensor::empty({N, R}, DType::F32);  // dy[:, o0:o0+R] [N, R]
  Tensor dx2 = dx->reshape({N, I});
  const float* g = dy.data<float>();
  for (int64_t o0 = 0; o0 < O; o0 += R) {
    int64_t rows = std::min(R, O - o0);
    dequant_weight_rows(lin, o0, rows, w_tile.data<float>());
    float* t = dy_tile.data<float>();
    for (int64_t n = 0; n < N; n++) std::memcpy(t + n * rows, g + n * O + o0, sizeof(float) * rows);
    Tensor wt = w_tile.slice0(0, rows);                                           // [rows, I]
    Tensor dyt = Tensor::borrow(t, {N, rows}, DType::F32, Device::CPU, nullptr);  // [N, rows]
    matmul(dx2, dyt, wt, false, false, 1.0f, 1.0f);
  }
}

void linear_backward_base(const Linear& lin, Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy,
                          const Tensor& x) {
  base_backward(lin, dx, dw, db, dy, x, false);
}

void linear_backward(const Linear& lin, Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x,
                     TrainableParams* params, bool overwrite_dx) {
  const TrainableAdapter* ta = nullptr;
  if (lin.adapter) {
    ta = dynamic_cast<const TrainableAdapter*>(lin.adapter.get());
    if (!ta)
      throw_error(ErrorKind::Unsupported, "linear_backward: the adapter on '", lin.name,
                  "' has no backward (it does not implement TrainableAdapter)");
    if (dx && overwrite_dx && ta->takes_over_backward()) {  // it accumulates
      dx->set_zero();
      overwrite_dx = false;
    }
    if (ta->backward_linear(lin, dx, dw, db, dy, x, params)) return;
  }
  base_backward(lin, dx, dw, db, dy, x, overwrite_dx);
  if (ta) ta->backward(dx, dy, x, params);
}

}  // namespace qtune
