// CUDA row kernels of peft/adaption_attention.h (called by its dispatch; shapes already checked there).
// R = N·Hq score rows, W = Lp·Hkv columns (column p·Hkv + j: prompt row p of kv head j).
#pragma once
#include "core/tensor.h"

namespace qtune {

// s F32 [R, W] → probs F32 [R, Lp] = softmax of the row's own columns ·scale, w [R, W] (F32 or BF16) =
// gate·probs there, 0 elsewhere.
void adaption_rows_forward_cuda(Tensor& probs, Tensor& w, const Tensor& s, int64_t Hq, int64_t Hkv,
                                int64_t Lp, float scale, float gate);
// ds F32 [R, W] (dout·Vᵀ), probs → z [R, W] = gate·P ⊙ (dŝ − Σ P·dŝ)·scale and w = gate·P on the row's
// columns (0 elsewhere); dgate F32 [1] += Σ P·dŝ over all rows (null: skipped).
void adaption_rows_backward_cuda(Tensor& z, Tensor& w, Tensor* dgate, const Tensor& ds, const Tensor& probs,
                                 int64_t Hq, int64_t Hkv, int64_t Lp, float scale, float gate);

}  // namespace qtune
