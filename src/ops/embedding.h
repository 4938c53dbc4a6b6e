// Token embedding lookup: the first op of the model. One declaration for both backends; the dispatch in
// ops/embedding.cpp checks shapes/dtypes and calls ops/cpu or ops/cuda.
#pragma once
#include "core/tensor.h"

namespace qtune {

// out[N, C] = table[ids[n], :]. ids: I32 [N] (any leading shape with N elements); table [V, C];
// out has table's dtype (or F32). An id outside [0, V) throws ErrorKind::Shape naming the id.
void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table);

// Backward: dtable[ids[n], :] += dout[n, :] (a scatter-add; repeated ids sum). dtable F32 [V, C], dout
// F32 [N, C]. For full fine-tuning of the embedding (PEFT's modules_to_save). Ids are range-checked.
void embedding_backward(Tensor& dtable, const Tensor& ids, const Tensor& dout);

}  // namespace qtune
