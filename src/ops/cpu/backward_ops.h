// CPU kernels of the backward ops, training attention and chunked cross-entropy (namespace qtune::cpu),
// the same parameter lists as their declarations in ops/<family>.h and ops/loss.h. The dispatchers
// (ops/backward.cpp, ops/loss.cpp) have checked devices, dtypes and shapes. All F32; gradients accumulate.
#pragma once
#include "core/tensor.h"
#include "ops/loss.h"

namespace qtune {
namespace cpu {

void embedding_backward(Tensor& dtable, const Tensor& ids, const Tensor& dout);
void rmsnorm_backward(Tensor& dx, Tensor* dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      float eps);
void rope_backward(Tensor& dx, const Tensor& positions, const Tensor& inv_freq);
void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up,
                     bool accumulate);
void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x, const Tensor& w);
void attention_forward_train(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor* seq_ids);
void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor* seq_ids);
LossSum cross_entropy_forward_backward(const Tensor& hidden, const Tensor& lm_head, const Tensor& labels,
                                       Tensor* dhidden, Tensor* dlm_head, float grad_scale,
                                       int64_t chunk_rows);

}  // namespace cpu
}  // namespace qtune
