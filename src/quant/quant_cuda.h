// CUDA kernels of quant/: 4-bit NF4/FP4 blockwise quantize and dequantize (plain or double-quantized
// absmax), 8-bit dynamic blockwise quantize and dequantize, the fused 4-bit GEMV, and the LLM.int8 pieces
// (row-wise int8 quantization with outlier columns, the rescaling epilogue, a small-batch int8 GEMV).
//
// Quantization writes what bitsandbytes' CUDA kernels write, bit for bit, as the CPU functions of quant4.h,
// blockwise8.h and int8.h write what its CPU path writes (the two differ in places; bnb_cuda_rules.h says
// where): fast-math flush to zero, the GPU's approximate reciprocal, its 4-bit thresholds and 8-bit search.
// Double quant's offset is torch's CUDA mean, reproduced on the host from the copied absmax (1/64 of the
// data or less). Dequantization is bitsandbytes' CUDA arithmetic too, which is the CPU functions' (the same
// f32 operations in the same order, never contracted, the same nibble order) except that a subnormal product
// is flushed to zero.
//
// Raw functions take device pointers and a stream; the Tensor-level ones use the legacy default stream
// (which orders with the blocking stream of ops/cuda). Declared only in CUDA builds.
#pragma once
#ifdef QTUNE_HAVE_CUDA
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "quant/blockwise8.h"
#include "quant/codebook.h"
#include "quant/quant4.h"

namespace qtune {

// ---- 4-bit blockwise -------------------------------------------------------------------------------

// Where a 4-bit tensor's per-block absmax comes from on the device: plain f32 values, or the nested form
// absmax[b] = f32(nested_code[qabsmax[b]] * nested_absmax[b / 256]) + offset (double quantization).
struct Absmax4View {
  const float* absmax = nullptr;         // F32 [num_blocks] (plain)
  const uint8_t* qabsmax = nullptr;      // U8 [num_blocks] (nested)
  const float* nested_absmax = nullptr;  // F32 [ceil(num_blocks / 256)]
  const float* nested_code = nullptr;    // F32 [256]
  float offset = 0.0f;
};
// The view of q's device tensors (q.nested picks the form). Throws Usage unless they are on the GPU.
Absmax4View absmax4_view(const Quant4Tensor& q);

// x: n values of dtype (F32/BF16/F16); packed: (n + 1) / 2 bytes; absmax: ceil(n / blocksize) floats.
void quantize_4bit_cuda_raw(const void* x, DType dtype, int64_t n, int64_t blocksize, QuantType qt,
                            uint8_t* packed, float* absmax, cudaStream_t stream);
// out[i] = out_dtype(r2(r1(code[q[e]] * absmax[e / blocksize]))) for e = e0 + i, i < count, where r1 and
// r2 round to round1 / round2 (F32: no rounding). e0 + count <= the tensor's element count.
void dequantize_4bit_cuda_raw(const uint8_t* packed, const Absmax4View& absmax, int64_t e0, int64_t count,
                              int64_t blocksize, QuantType qt, DType out_dtype, void* out,
                              cudaStream_t stream, DType round1 = DType::F32, DType round2 = DType::F32);

// Tensor-level, as quantize_4bit / dequantize_4bit: x a GPU F32/BF16/F16 tensor; the result's tensors
// live on the GPU (packed, absmax, and when nested nested_absmax and nested_code).
Quant4Tensor quantize_4bit_cuda(const Tensor& x, QuantType qt, int64_t blocksize = 64,
                                bool double_quant = false);
Tensor dequantize_4bit_cuda(const Quant4Tensor& q, DType out_dtype);
// Copies every tensor of q to `device` (the metadata is shared).
Quant4Tensor quant4_to(const Quant4Tensor& q, Device device);

// ---- 8-bit dynamic blockwise -----------------------------------------------------------------------

// code: device F32 [256] sorted (the dynamic map). Quantizes x - offset (f32, exact) with bitsandbytes' CUDA
// rules.
void quantize_blockwise_8bit_cuda_raw(const void* x, DType dtype, int64_t n, const float* code,
                                      int64_t blocksize, uint8_t* q, float* absmax, cudaStream_t stream,
                                      float offset = 0.0f);
void dequantize_blockwise_8bit_cuda_raw(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                                        int64_t blocksize, DType out_dtype, void* out, cudaStream_t stream);
// Tensor-level: x on the GPU; the result's tensors on the GPU.
Blockwise8 quantize_blockwise_8bit_cuda(const Tensor& x, const std::vector<float>& code, int64_t blocksize);
Tensor dequantize_blockwise_8bit_cuda(const Blockwise8& b, const std::vector<float>& code, DType out_dtype);

// ---- fused 4-bit GEMV --------------------------------------------------------------------------------

// out[r, o] = Σ_i x[r, i] · bf16(code[q[o, i]]) · absmax[blk(o, i)] (+ bias[o]) for r < rows (1 or 2):
// per 32 weights Σ bf16(code)·x on the tensor cores (f32 accumulation), then times the block's absmax.
// The packed weight [O, I] is read once.
struct Gemv4Args {
  const uint8_t* packed = nullptr;  // [O · I / 2], 16-byte aligned
  Absmax4View absmax;
  int64_t blocksize = 64;
  QuantType quant_type = QuantType::NF4;
  const void* x = nullptr;  // BF16 [rows, I]
  // The input's residual add and RMSNorm (decode, one row): when norm_w (BF16 [I]) is set, the GEMV's input
  // is rmsnorm(r) · norm_w with r = x + x_add (x alone when x_add is null), computed and rounded as
  // add_rmsnorm / rmsnorm_forward do (the same bits), and block 0 writes r to res_out (BF16 [I], apart from
  // x and x_add) when it is set. All 16-byte aligned; every weight of a launch shares them.
  const void* x_add = nullptr;
  const void* norm_w = nullptr;
  float norm_eps = 0.0f;
  void* res_out = nullptr;
  void* out = nullptr;  // out_dtype [rows, O]
  DType out_dtype = DType::BF16;
  // SwiGLU applied to the outputs (decode's gate/up): with exactly two weights of equal O in one
  // gemv_4bit_cuda_parts launch (gate, then up) and BF16 outs, glu_out (BF16 [rows, O]) gets
  // silu(out0) · out1, bit for bit swiglu_forward of the two outs. Every weight of the launch names it.
  void* glu_out = nullptr;
  const void* bias = nullptr;  // bias_dtype [O] or null
  DType bias_dtype = DType::BF16;
  int64_t O = 0, I = 0;
  int rows = 1;
  // The GEMV is a programmatic dependent launch: it starts while the kernel before it on the stream
  // finishes and waits for it before reading x. True promises that no kernel that may still be running
  // writes the packed weights or the absmax (a loaded model's weights): they may then be read before the
  // wait.
  bool weights_static = false;
};
// True when the GEMV handles the weight: I % 32 == 0 and a 16-byte aligned packed pointer.
bool gemv_4bit_supported(int64_t I, const void* packed);
void gemv_4bit_cuda(const Gemv4Args& a, cudaStream_t stream);
// True when two weights [O, I] with this block size can share a launch with glu_out at `rows` rows of x
// (block size >= 64, I % 64 == 0, and the shared memory of that layout).
bool gemv_4bit_glu_supported(int64_t I, int64_t blocksize, int rows);
// Up to 3 weights that share x (q/k/v, gate/up) in one launch, each with its own packed weight, absmax,
// out, bias and O: the values of one gemv_4bit_cuda per weight (bit for bit where a row's 256-weight steps
// fall to the warps the same way in both; otherwise its partial sums may be added in other groupings; two
// weights of equal O take their 16-row groups in turns, so that a block holds the same rows of both), in
// a launch that fills the GPU
// (k_proj alone, 1024 rows, gives work to 64 of an H200's 132 SMs). The weights must share x, I, rows,
// block size, quant type, out dtype, weights_static and the absmax form (plain or nested); Usage
// otherwise.
constexpr int kGemv4MaxParts = 3;  // weights per gemv_4bit_cuda_parts launch
void gemv_4bit_cuda_parts(const std::vector<Gemv4Args>& parts, cudaStream_t stream);

// ---- LLM.int8 ----------------------------------------------------------------------------------------

// Row-wise int8 quantization of x [rows, cols] (F32/BF16/F16), values first rounded to f16 when
// round_f16: scale[r] = max |x| over the row's elements below threshold (all of them when threshold is 0),
// q = round_half_even(x · s) clamped to ±127, 0 when scale is 0. scale_rule picks s: BnbBackend::Cuda
// 127 · rcp(scale) with rcp the GPU's approximate reciprocal, as bitsandbytes' kInt8VectorQuant
// (`__fdividef(127, absmax)` under fast math; for stored weights, which then equal what transformers writes
// on a GPU); BnbBackend::Cpu (1 / scale) · 127, as its CPU path and int8.h (for activations, so the GPU
// forward equals the CPU forward). The two part in about one code in 10^5. With threshold > 0,
// col_flags[c] is set to 1 for every column holding an |x| >= threshold (col_flags zeroed by the caller,
// or left zeroed by int8_outliers_cuda's clear_done).
// Elements of such columns still get a q value (the epilogues subtract their product again).
void int8_quant_rows_cuda(const void* x, DType dtype, int64_t rows, int64_t cols, float threshold,
                          bool round_f16, int8_t* q, float* scale, uint8_t* col_flags, cudaStream_t stream,
                          BnbBackend scale_rule);
// out[r, c] = out_dtype(((float)q[r0 + r, c] · scale[r0 + r]) · (1/127)) for r < rows: the dequantized
// int8 weight rows (int8_vectorwise_dequant's arithmetic).
void int8_dequantize_rows_cuda_raw(const int8_t* q, const float* scale, int64_t r0, int64_t rows,
                                   int64_t cols, DType out_dtype, void* out, cudaStream_t stream);
// What the int8 epilogues need beyond the int32 products (all device pointers).
struct Int8Epilogue {
  const float* sa = nullptr;   // [N] activation row scales
  const int8_t* qa = nullptr;  // [N, K] quantized activations
  const float* sb = nullptr;   // [O] weight row scales (SCB)
  const int8_t* qb = nullptr;  // [O, K] int8 weight
  const void* x = nullptr;     // x_dtype [N, K], the original activations (outlier columns)
  DType x_dtype = DType::BF16;
  const int32_t* cols = nullptr;   // outlier columns [count], ascending
  const int32_t* count = nullptr;  // [1]; null: no outlier columns
  // Gathered by int8_outliers_cuda: the weights at the first `cap` (8 to 64) outlier columns, and each
  // row's qa and x at the first 8 (the epilogue loads them without waiting for the count).
  const float* wout = nullptr;   // [cap, O] ((float)qb[o, c_j] · sb[o]) · (1/127)
  const int8_t* qout = nullptr;  // [O, 8] qb[o, c_j] for j < min(count, 8), 0 beyond
  int cap = 0;
  const int8_t* qa_c = nullptr;  // [N, 8] qa[m, c_j], 0 for j >= count (required with count)
  const float* x_c = nullptr;    // [N, 8] x[m, c_j], 0 for j >= count
  const void* bias = nullptr;    // bias_dtype [O] or null
  DType bias_dtype = DType::F32;
  void* out = nullptr;  // out_dtype [N, O]
  DType out_dtype = DType::BF16;
  int64_t N = 0, K = 0, O = 0;
};
// From the column flags (zeroed, then set by int8_quant_rows_cuda): cols[0 .. *count) = the flagged columns
// in ascending order, and the gathered data of Int8Epilogue: wout for the first min(count, cap) columns and
// qout for the first min(count, 8) (cap <= 64; e.sb, e.qb), and when qa_c is given qa_c / x_c (e.qa, e.x).
// e's own cols, count, wout, qout, qa_c and x_c are not read. With clear_done (a device counter holding 0),
// col_flags are zeroed once listed and the counter is left at 0 again, ready for the next call (no memset in
// between). max_blocks > 0: at most that many blocks (of 1024 threads), to run beside a kernel that leaves
// that many SMs free.
void int8_outliers_cuda(const uint8_t* col_flags, const Int8Epilogue& e, int32_t* cols, int32_t* count,
                        float* wout, int8_t* qout, int cap, int8_t* qa_c, float* x_c, uint32_t* clear_done,
                        int max_blocks, cudaStream_t stream);
// out[m, o] = (float)(acc − Σ_j qa[m, c_j]·qb[o, c_j]) · (sa[m]·sb[o]) · 6.200124e-05 (+ bias[o])
//             + Σ_j x[m, c_j] · w[o, c_j], w = ((float)qb · sb[o]) · (1/127), one fma per j in the CPU
//             forward's order.
// acc: int32 [N, O].
void int8_epilogue_cuda(const int32_t* acc, const Int8Epilogue& e, cudaStream_t stream);
// The same output computed directly (int32 dot products with __dp4a), for few rows or shapes cuBLASLt's
// int8 GEMM does not take; rows [m0, m0 + rows) of N, rows <= 4.
void int8_gemv_cuda(const Int8Epilogue& e, int64_t m0, int rows, cudaStream_t stream);
// The same output for one row of x (e.N == 1) in one launch, from x alone: the row quantization
// (int8_quant_rows_cuda's codes and scale, round_f16, the CPU's scale rule) and the outlier columns (|f16(x)|
// >= threshold; none when threshold <= 0) are worked out inside it, so e.sa, e.qa, e.cols, e.count and the
// gathered fields are not read. Up to kInt8RowMaxParts weights that share x (the same e.x, K and out dtype;
// q/k/v, gate/up) in the one launch. int8_gemv_row_supported: K % 16 == 0, K <= 32768, x 16-byte aligned.
constexpr int kInt8RowMaxParts = 3;
bool int8_gemv_row_supported(int64_t K, const void* x, DType x_dtype);
// With in, the row of x (BF16) enters through one of two stages, all its rows BF16 [K], 16-byte aligned:
//   norm_w set: rmsnorm(x + x_add) · norm_w, bit for bit add_rmsnorm's (or, x_add null, rmsnorm_forward's)
//               output, and block 0 writes x + x_add to res_out (when set; not x or x_add). K <= 8192
//               (int8_gemv_row_norm_supported).
//   glu_up set: silu(x) · glu_up, bit for bit swiglu_forward's output (x: the gate's output). K <= 16384
//               (int8_gemv_row_glu_supported).
struct Int8RowInput {
  const void* x_add = nullptr;
  const void* norm_w = nullptr;
  void* res_out = nullptr;
  float eps = 0.0f;
  const void* glu_up = nullptr;
};
bool int8_gemv_row_norm_supported(int64_t K);
bool int8_gemv_row_glu_supported(int64_t K);
void int8_gemv_row_cuda(const std::vector<Int8Epilogue>& parts, float threshold, cudaStream_t stream,
                        const Int8RowInput* in = nullptr);

// Many outlier columns (n of them, the count the host has read): bitsandbytes' decomposition with the
// outlier products as GEMMs. int8_gather_columns_cuda writes, for j < n (0 for n <= j < np),
//   xg[m, j] = x[m, c_j] (xg_dtype, BF16 or F32),  qag[m, j] = qa[m, c_j]          [N, np]
//   wq8[o, j] = qb[o, c_j],  wqf[o, j] = (float)qb[o, c_j] (xg_dtype: exact)        [O, np]
// (e.cols, e.x, e.qa, e.qb). Then corr = qag · wq8ᵀ (int32) and fsum = xg · wqfᵀ (f32) are the caller's
// GEMMs, and int8_epilogue_dense_cuda writes
//   out[m, o] = (float)(acc − corr) · (sa[m]·sb[o]) · 6.200124e-05 (+ bias[o]) + fsum[m, o] · (sb[o] ·
//   (1/127))
// (e.sa, e.sb, e.bias, e.out). The f32 sums run in the GEMM's order, not the CPU forward's.
void int8_gather_columns_cuda(const Int8Epilogue& e, int64_t n, int64_t np, void* xg, DType xg_dtype,
                              int8_t* qag, int8_t* wq8, void* wqf, cudaStream_t stream);
void int8_epilogue_dense_cuda(const int32_t* acc, const int32_t* corr, const float* fsum,
                              const Int8Epilogue& e, cudaStream_t stream);

}  // namespace qtune

#endif  // QTUNE_HAVE_CUDA
