// CPU kernels of the ops (namespace qtune::cpu), the same parameter lists as the public declarations in
// ops/*.h. The dispatchers (ops/<family>.cpp) have already checked devices, dtypes and shapes, so these
// trust their arguments. Math in f32 (accumulations that can lose digits in f64); OpenMP threads, one per
// core by default; GEMMs through OpenBLAS, one BLAS thread per OpenMP thread (see cpu/matmul.cpp).
#pragma once
#include "core/tensor.h"

namespace qtune {
namespace cpu {

// table F32/BF16/F16 [V, C]; out F32 or table's dtype [N, C]; ids I32 [N], already range-checked.
void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table);
// All F32.
void linear_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias);
void matmul(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, float alpha,
            float beta);
void rmsnorm_forward(Tensor& out, const Tensor& x, const Tensor& weight, float eps);
void rope_forward(Tensor& x, const Tensor& positions, const Tensor& inv_freq);
void attention_forward(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset,
                       int64_t kv_len);
void swiglu_forward(Tensor& out, const Tensor& gate, const Tensor& up);
// F32 only.
void add_inplace(Tensor& x, const Tensor& y);
// Any of F32/BF16/F16 to any of them.
void convert(Tensor& out, const Tensor& in);

// Loops with less work than this many elements run on one thread: a parallel region costs microseconds,
// more on a busy machine where a spinning thread may be descheduled, which decode's small ops cannot repay.
constexpr int64_t kParallelMinWork = 1 << 15;

// The number of OpenMP threads the kernels use (default: the machine's cores, or OMP_NUM_THREADS).
int num_threads();
void set_num_threads(int n);

}  // namespace cpu
}  // namespace qtune
