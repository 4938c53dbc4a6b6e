// Internal to ops/cuda: what the training attention's forward (attention_train.cu) and backward
// (attention_train_backward.cu) share: the argument checks, the packed-sequence key window, and the
// choice between the tensor-core kernels and the simple (any dtype, any head dim <= 256) ones.
#pragma once
#include "core/tensor.h"

namespace qtune {
namespace cuda {

constexpr int kTrainBlock = 64;  // queries per forward block = keys per backward block
constexpr int kTrainMaxD = 256;  // largest head dim of the simple kernels

struct TrainDims {
  int B, T, Hq, Hkv, D;
};

// Checks q [B, T, Hq, D], k and v [B, T, Hkv, D] (on the GPU, one float dtype, Hq % Hkv == 0, D <= 256)
// and seq_ids (null, or I32 [B, T] on the GPU); returns the sizes.
TrainDims check_train_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor* seq_ids);

// I32 [B, T] on the GPU: begin[b, t] = the first key query t sees (the start of its run of equal
// seq_ids; 0 for every t without seq_ids, returned as an undefined Tensor). Query t sees keys [begin, t].
Tensor train_key_begin(const Tensor* seq_ids, const TrainDims& a);

// True when the tensor-core kernels apply: bf16 q/k/v (and `also`, e.g. dout), head dim 32/64/96/128,
// 16-byte aligned rows.
bool train_mma_supported(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* also = nullptr);

// Query m-tiles (16 rows each) per warp of the tensor-core forward: 1 (64 queries per block) or 2 (128,
// the default; 0 restores it). For the tests and the timing comparison.
void set_train_forward_mtiles(int mt);

}  // namespace cuda
}  // namespace qtune
