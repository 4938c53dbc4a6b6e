// Internal to ops/cuda: the two attention kernels' launchers, shared by attention.cu (checks and the
// choice of kernel), attention_prefill.cu (tensor-core prefill) and attention_decode.cu (split-K decode).
#pragma once
#include "core/tensor.h"

namespace qtune {
namespace cuda {

struct AttnDims {
  int B, T, Hq, Hkv, D, Smax, q_offset, kv_len;
  // Decode at a device-held position (attention_forward_at): q_offset = *pos_dev, kv_len = q_offset + T,
  // read by the kernel; the slice count depends on Smax alone and the partials live in `workspace`.
  const int* pos_dev = nullptr;
  float* workspace = nullptr;
  // RoPE folded in (attention_rope_forward_at; device position, B = T = 1): q is rotated as the kernel
  // reads it, and the block whose slice holds the position writes k_new rotated and v_new ([Hkv, D]) to the
  // caches' row first.
  const void* k_new = nullptr;
  const void* v_new = nullptr;
  const float* inv_freq = nullptr;
};

constexpr float kLog2e = 1.4426950408889634f;

// Head dims the tensor-core prefill kernel is built for (bf16 q/k/v, 16-byte aligned).
bool prefill_supports(int D);
// out (BF16 or F32) for bf16 q [B, T, Hq, D] and caches k, v [B, Smax, Hkv, D]; checked by the caller.
void launch_attention_prefill(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                              const AttnDims& a);
// Any float dtypes, D in 8/16/32/64/96/128/256 (else Unsupported); k, v 16-byte aligned.
void launch_attention_split(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                            const AttnDims& a);
// Floats of workspace the split kernel needs in the device-position mode (0: a single slice).
int64_t attention_split_workspace_floats(const AttnDims& a);

}  // namespace cuda
}  // namespace qtune
