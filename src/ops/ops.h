// All ops of a Llama block, one declaration for both backends (an umbrella over the per-family headers).
// Each function dispatches on the device of its tensors (all tensors of one call live on one device):
// CPU kernels in ops/cpu/ compute in f32; CUDA kernels in ops/cuda/ take bf16 activations/weights (f32
// also accepted) and accumulate in f32. All tensors are contiguous. Shape letters: N = rows (batch ×
// tokens), C = hidden, H = heads, D = head dim, F = MLP width, V = vocab, B = batch, T = new tokens,
// S = keys.
#pragma once
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/loss.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/rope.h"
