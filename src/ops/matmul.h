// Matrix products: the Linear layer's y = x·Wᵀ + b, and a general GEMM with transposes for the backward
// passes to come. CPU: f32 through OpenBLAS sgemm, split across the OpenMP threads; CUDA: cuBLASLt.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace qtune {

// out[N, O] = x[N, I] · w[O, I]ᵀ (+ bias[O]). x may have any leading shape with I as its last dim.
// CPU: all F32. CUDA: x/w BF16 (or all F32), out BF16 or F32, bias like w.
void linear_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias = nullptr);

// outs[j][N, O_j] = x[N, I] · ws[j][O_j, I]ᵀ for weights that share one input (q/k/v, gate/up), no bias.
// CUDA: one GEMV launch at decode (bf16, N <= 2, up to 4 weights); otherwise, and on the CPU, one
// linear_forward per weight. Each (out, w) pair is checked as linear_forward checks it.
void linear_forward_multi(const std::vector<Tensor*>& outs, const Tensor& x,
                          const std::vector<const Tensor*>& ws);

// out[M, N] = alpha · op(a) · op(b) + beta · out, op(t) = t or tᵀ. a [M, K] (or [K, M] when trans_a),
// b [K, N] (or [N, K] when trans_b). CPU: F32. CUDA: a, b F32 or both BF16/F16; out F32/BF16/F16.
void matmul(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, float alpha = 1.0f,
            float beta = 0.0f);

// Backward of linear_forward (dense weights), each gradient only when its pointer is non-null and
// accumulated (+=):  dx[N, I] += dy[N, O]·w[O, I],  dw[O, I] += dyᵀ·x,  db[O] += Σ_n dy[n, :].
// Frozen base weights need only dx. x and dy may have any leading shape (N rows). CPU F32.
void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x, const Tensor& w);

}  // namespace qtune
