// LoRA dropout on the GPU as a materialized copy, with the masks of train/lora_fused.h (so forward, recompute
// and backward, CPU and GPU drop the same elements). Only DoRA's training path still needs the dropped input
// itself (its base weight multiplies it too); plain LoRA applies the mask inside its fused kernels.
#pragma once
#include "core/tensor.h"
#include "train/lora_fused.h"

namespace qtune {

// out F32/BF16 [n] = m ⊙ x (kept elements scaled by m.keep) with x F32/BF16/F16 [n], both on the GPU (out may
// be x itself); x is the tensor the mask indexes from its element 0.
void lora_dropout_cuda(Tensor& out, const Tensor& x, const LoraMask& m);

}  // namespace qtune
