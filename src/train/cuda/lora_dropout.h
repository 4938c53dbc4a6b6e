// LoRA dropout on the GPU with the CPU trainer's masks (train/lora_train.cpp): element i is dropped when
// splitmix64(base + i) < threshold, kept ones scaled by keep = 1/(1-p); the mask is a pure function of
// (base, i), so forward, recompute and backward agree without storing it, and CPU and GPU runs drop the
// same elements.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace qtune {

// out F32/BF16 [n] = dropout(x) with x F32/BF16/F16 [n], both on the GPU (out may be x itself).
void lora_dropout_cuda(Tensor& out, const Tensor& x, uint64_t base, uint64_t threshold, float keep);

}  // namespace qtune
