// The CUDA side of model/quant_linear.h, called by its dispatch (quant_linear.cpp) when x or the weight is on
// the GPU: forwards, and quantization of a GPU weight into GPU storage. Internal to model/.
#pragma once
#ifdef QTUNE_HAVE_CUDA
#include <memory>
#include <vector>

#include "model/quant_linear.h"

namespace qtune {

void quant4_linear_forward_cuda(Tensor& out, const Tensor& x, const Quant4Linear& w, const Tensor* bias);
void quant4_linear_forward_multi_cuda(const std::vector<Tensor*>& outs, const Tensor& x,
                                      const std::vector<const Quant4Linear*>& ws,
                                      const std::vector<const Tensor*>& biases);
// A decoder block's first Linears at one token, with the residual add and RMSNorm before them in the same
// launch: outs[j] = rmsnorm(r) · norm_w · Wjᵀ (+ bias j), r = x + x_add (x alone when x_add is null), and
// r written to res_out when set (apart from x and x_add). Bit for bit add_rmsnorm (or rmsnorm_forward)
// then quant4_linear_forward_multi_cuda. x, x_add, res_out: BF16 [1, I]; norm_w BF16 [I]. With glu_out
// (BF16 [1, O]; ws = gate, up with quant4_gemv_glu_ok) the same launch also writes silu(outs[0]) ·
// outs[1], bit for bit swiglu_forward of the BF16 outs. False, with nothing queued, when the 4-bit GEMV
// does not take it; quant4_gemv_norm_ok says so for one weight.
bool quant4_gemv_norm_ok(const Quant4Linear& w, const Tensor& norm_w);
bool quant4_gemv_glu_ok(const Quant4Linear& gate, const Quant4Linear& up);
bool quant4_linear_forward_norm_cuda(const std::vector<Tensor*>& outs, const Tensor& x, const Tensor* x_add,
                                     const Tensor& norm_w, float eps, Tensor* res_out,
                                     const std::vector<const Quant4Linear*>& ws,
                                     const std::vector<const Tensor*>& biases, Tensor* glu_out = nullptr);
void int8_linear_forward_cuda(Tensor& out, const Tensor& x, const Int8Linear& w, const Tensor* bias);
// Weights that share x: one launch at one row of x when they allow it (int8_gemv_row_cuda), else one
// int8_linear_forward_cuda each.
void int8_linear_forward_multi_cuda(const std::vector<Tensor*>& outs, const Tensor& x,
                                    const std::vector<const Int8Linear*>& ws,
                                    const std::vector<const Tensor*>& biases);
// As quant4_linear_forward_norm_cuda (without glu_out) for LLM.int8 weights that share x: one launch,
// rmsnorm(x + x_add) · norm_w entering the row quantization, bit for bit add_rmsnorm (or rmsnorm_forward)
// then int8_linear_forward_multi_cuda. False, with nothing queued, when the int8 row GEMV does not take it;
// int8_gemv_norm_ok says so for the weights (on the GPU, one K and threshold, K <= 8192).
// out = (silu(gate) · up) · Wᵀ (+ bias) at one row (gate, up: BF16 [1, K]) in one launch, bit for bit
// swiglu_forward then int8_linear_forward_cuda; false, with nothing queued, when the int8 row GEMV does not
// take it (int8_gemv_glu_ok: on the GPU, K <= 16384).
bool int8_gemv_glu_ok(const Int8Linear& w);
bool int8_linear_forward_glu_cuda(Tensor& out, const Tensor& gate, const Tensor& up, const Int8Linear& w,
                                  const Tensor* bias);
bool int8_gemv_norm_ok(const std::vector<const Int8Linear*>& ws, const Tensor& norm_w);
bool int8_linear_forward_norm_cuda(const std::vector<Tensor*>& outs, const Tensor& x, const Tensor* x_add,
                                   const Tensor& norm_w, float eps, Tensor* res_out,
                                   const std::vector<const Int8Linear*>& ws,
                                   const std::vector<const Tensor*>& biases);

// w: GPU F32/BF16/F16 [O, I]; the storage equals quantize_linear_4bit / _8bit of the same values on the CPU.
std::shared_ptr<const Quant4Linear> quantize_linear_4bit_cuda(const Tensor& w, QuantType qt,
                                                              int64_t blocksize, bool double_quant,
                                                              DType compute_dtype);
std::shared_ptr<const Int8Linear> quantize_linear_8bit_cuda(const Tensor& w, float threshold);

// acc[N, O] = qa[N, K] · qb[O, K]ᵀ in int32 through cuBLASLt, as the many-row int8 forward runs it (device
// pointers, the ops stream); false, with nothing queued, when cuBLASLt has no int8 algorithm for the shape.
bool int8_gemm_cuda(int32_t* acc, const int8_t* qa, const int8_t* qb, int64_t N, int64_t K, int64_t O);

}  // namespace qtune
#endif  // QTUNE_HAVE_CUDA
