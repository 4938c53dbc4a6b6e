// Quantized weight storage for Linear (linear.h) and the CPU forward passes that read it, matching what
// bitsandbytes' Linear4bit / Linear8bitLt compute on the CPU:
//
//   4-bit (NF4/FP4, optional double quant): W[o, i] = cd(orig(code[q] * absmax[blk])), where orig rounds to
//   the checkpoint's dtype (bitsandbytes dequantizes into quant_state.dtype) and cd to the compute dtype
//   (it then casts to bnb_4bit_compute_dtype). x, the bias and the result are rounded to the compute dtype
//   too (Linear4bit casts them); the product itself accumulates in f32. One token: a fused GEMV
//   that reads the packed bytes once, a 16-entry table of dequantized values per block, OpenMP over output
//   rows. Many tokens: each thread dequantizes a tile of output rows into a reused f32 buffer and runs a
//   single-threaded sgemm into its columns of out.
//
//   8-bit (LLM.int8): x is rounded to f16 (MatMul8bitLt casts it), outlier columns are those with
//   |x| >= threshold in any row; the rest is quantized row-wise to int8 and multiplied with the int8
//   weight in int32, rescaled by (sx * sw) / 127^2; the outlier columns use the original f32 x against
//   the f32-dequantized weight columns. The weight itself is stored as bitsandbytes stores it (from an
//   f16 copy of the original, no threshold).
//
// On CUDA (storage moved with quant4_linear_to / int8_linear_to, or quantized from a GPU weight) x is BF16
// and out BF16 or F32 (model/cuda/):
//   4-bit, N <= 4 rows: the fused GEMV (quant/quant_cuda.h) in pairs of rows, f32 accumulation of
//   code·x per 32 weights times the block's absmax. More rows: the weight is dequantized into a reused
//   BF16 buffer, bf16(cd(orig(code·absmax))), and multiplied by cuBLASLt (ops/cuda/linear.cu).
//   8-bit: the same decomposition as the CPU (row-wise int8 x with f16 rounding, outlier columns in f32)
//   with the int8 product through cuBLASLt (int32 accumulation) and one epilogue kernel; a __dp4a GEMV for
//   N <= 4. Given the same x, the f32 result equals the CPU's before the rounding to out's dtype.
#pragma once
#include <memory>

#include "core/tensor.h"
#include "quant/int8.h"
#include "quant/quant4.h"

namespace qtune {

struct Quant4Linear {
  Quant4Tensor q;  // the bitsandbytes form, shape [O, I]; its tensors on the CPU or all on the GPU
  // F32 [num_blocks], double quantization undone once at load. On the GPU only without double quant (it is
  // then q.absmax); with it, undefined: the kernels undo the nesting on the fly, keeping 1 byte per block.
  Tensor absmax;
  DType compute_dtype = DType::F32;  // F32, BF16 or F16: dequantized weights are rounded to it

  bool on_cuda() const { return q.packed.is_cuda(); }
};

struct Int8Linear {
  Int8Rowwise w;           // q I8 [O, I], scale F32 [O] (bitsandbytes' SCB), both on the CPU or the GPU
  float threshold = 6.0f;  // llm_int8_threshold; 0 = no outlier decomposition

  bool on_cuda() const { return w.q.is_cuda(); }
};

// Builds the storage from a bitsandbytes 4-bit tensor (validated; absmax dequantized).
std::shared_ptr<const Quant4Linear> make_quant4_linear(Quant4Tensor q, DType compute_dtype);
// Quantizes a dense weight [O, I] (F32/BF16/F16) as bitsandbytes' Linear4bit / Int8Params do. A GPU weight
// is quantized on the GPU (bit-identical storage) and the result lives there.
std::shared_ptr<const Quant4Linear> quantize_linear_4bit(const Tensor& w, QuantType qt, int64_t blocksize,
                                                         bool double_quant, DType compute_dtype);
std::shared_ptr<const Int8Linear> quantize_linear_8bit(const Tensor& w, float threshold);

// The same storage on `device` (a copy of every tensor; absmax as described above).
std::shared_ptr<const Quant4Linear> quant4_linear_to(const Quant4Linear& w, Device device);
std::shared_ptr<const Int8Linear> int8_linear_to(const Int8Linear& w, Device device);

// out[N, O] = x[N, I] · Wᵀ (+ bias[O]). CPU: x and out F32, bias F32 or undefined. CUDA (storage on the
// GPU): x BF16, out BF16 or F32, bias F32/BF16/F16 or undefined.
void quant4_linear_forward(Tensor& out, const Tensor& x, const Quant4Linear& w, const Tensor* bias);
void int8_linear_forward(Tensor& out, const Tensor& x, const Int8Linear& w, const Tensor* bias);

// The dense f32 weight [O, I] that quant4_linear_forward multiplies with (for tests and merges). CPU storage.
Tensor quant4_linear_dense(const Quant4Linear& w);

#ifdef QTUNE_HAVE_CUDA
// Rows [o0, o0 + rows) of the dequantized weight into out, BF16 [rows, I] on the GPU (storage on the GPU):
// 4-bit: bf16(cd(orig(code·absmax))), exactly the values the many-token forward multiplies with (the
// GEMV uses code·absmax before rounding); 8-bit: bf16((q·SCB)·(1/127)), the outlier columns' weights.
void quant4_dequantize_rows_cuda(Tensor& out, const Quant4Linear& w, int64_t o0, int64_t rows);
void int8_dequantize_rows_cuda(Tensor& out, const Int8Linear& w, int64_t o0, int64_t rows);
#endif

}  // namespace qtune
