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
#pragma once
#include <memory>

#include "core/tensor.h"
#include "quant/int8.h"
#include "quant/quant4.h"

namespace qtune {

struct Quant4Linear {
  Quant4Tensor q;                    // the bitsandbytes form, shape [O, I]
  Tensor absmax;                     // F32 [num_blocks], double quantization undone once at load
  DType compute_dtype = DType::F32;  // F32, BF16 or F16: dequantized weights are rounded to it
};

struct Int8Linear {
  Int8Rowwise w;           // q I8 [O, I], scale F32 [O] (bitsandbytes' SCB)
  float threshold = 6.0f;  // llm_int8_threshold; 0 = no outlier decomposition
};

// Builds the storage from a bitsandbytes 4-bit tensor (validated; absmax dequantized).
std::shared_ptr<const Quant4Linear> make_quant4_linear(Quant4Tensor q, DType compute_dtype);
// Quantizes a dense CPU weight [O, I] (F32/BF16/F16) as bitsandbytes' Linear4bit / Int8Params do.
std::shared_ptr<const Quant4Linear> quantize_linear_4bit(const Tensor& w, QuantType qt, int64_t blocksize,
                                                         bool double_quant, DType compute_dtype);
std::shared_ptr<const Int8Linear> quantize_linear_8bit(const Tensor& w, float threshold);

// out[N, O] = x[N, I] · Wᵀ (+ bias[O]); CPU, x and out F32, bias F32 or undefined.
void quant4_linear_forward(Tensor& out, const Tensor& x, const Quant4Linear& w, const Tensor* bias);
void int8_linear_forward(Tensor& out, const Tensor& x, const Int8Linear& w, const Tensor* bias);

// The dense f32 weight [O, I] that quant4_linear_forward multiplies with (for tests and merges).
Tensor quant4_linear_dense(const Quant4Linear& w);

}  // namespace qtune
