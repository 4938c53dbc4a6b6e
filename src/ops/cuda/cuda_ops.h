// CUDA kernels of the Llama-block ops, the same parameter lists as src/ops/ops.h in namespace
// qtune::cuda. The dispatch files (src/ops/<family>.cpp) call these when the tensors live on the GPU.
// Kernels take BF16 storage (F32 also accepted) and accumulate in f32; tensors are contiguous.
// Declared only in CUDA builds (QTUNE_HAVE_CUDA); each function checks dtypes/shapes and throws
// qtune::Error (Shape/Unsupported) on bad input, ErrorKind::Cuda when the runtime fails.
#pragma once
#ifdef QTUNE_HAVE_CUDA
#include <vector>

#include "core/tensor.h"
#include "ops/loss.h"

namespace qtune {
namespace cuda {

// out[N, C] = table[ids[n], :]. ids I32 [N]; table BF16/F32 [V, C]; out BF16/F32 [N, C].
void embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table);

// out[N, O] = x[N, I] · w[O, I]ᵀ (+ bias[O]); x, w BF16 (or both F16, or all F32); out BF16 or F32;
// bias BF16/F32/F16. cuBLASLt (f32 compute), a streaming GEMV kernel for N <= 2 (decode).
void linear_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias = nullptr);
// outs[j][N, O_j] = x[N, I] · ws[j][O_j, I]ᵀ (+ biases[j]) for weights sharing one input (q/k/v,
// gate/up): at decode (bf16, N <= 2, up to 4 weights, one out dtype) a single GEMV launch; otherwise one
// linear_forward per weight. biases: empty, or one entry (possibly null) per weight.
void linear_forward_multi(const std::vector<Tensor*>& outs, const Tensor& x,
                          const std::vector<const Tensor*>& ws,
                          const std::vector<const Tensor*>& biases = {});
// The cuBLASLt path alone, whatever N (for tests and the workbench; linear_forward checks the arguments).
void linear_forward_cublaslt(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias = nullptr);

// out[M, N] = alpha·op(a)·op(b) + beta·out (row-major, op = transpose when asked), cuBLASLt with f32
// accumulation. a, b share a dtype (F32, BF16 or F16); out F32, BF16 or F16.
void matmul(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, float alpha,
            float beta);

// out[N, C] = x / sqrt(mean(x²) + eps) * weight[C], f32 math.
void rmsnorm_forward(Tensor& out, const Tensor& x, const Tensor& weight, float eps);

// In place on x[N, H, D]: rotate-half RoPE, angle positions[n] * inv_freq[i]; positions I32 [N],
// inv_freq F32 [D/2], both on the device.
void rope_forward(Tensor& x, const Tensor& positions, const Tensor& inv_freq);

// Fused causal GQA attention (flash style). q [B, T, Hq, D]; k, v [B, Smax, Hkv, D], first kv_len rows
// valid; query t at position q_offset + t sees keys s <= q_offset + t. out [B, T, Hq, D]. Head dims
// 8/16/32/64/96/128/256 (others: Unsupported); bf16 prefill (T >= 16) runs on the tensor cores,
// everything else (decode) on the split-K kernel.
void attention_forward(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset,
                       int64_t kv_len);
// The same, choosing the split-K (flash-decoding) kernel even where the tensor-core prefill kernel would
// run when force_split is true (for tests and the workbench).
void attention_forward_split(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset,
                             int64_t kv_len, bool force_split);

// Decode of one token per sequence at a position held on the device (pos I32 [1], the same for every
// sequence): nothing the host passes depends on the position, so a CUDA graph captured once replays at
// every position. q_offset = pos, kv_len = pos + 1; q, out [B, 1, Hq, D]; k, v [B, Smax, Hkv, D]. The
// split-K slice count depends on Smax only; workspace F32 with at least attention_at_workspace_floats()
// elements holds the slices' partials.
int64_t attention_at_workspace_floats(const Tensor& q, const Tensor& k);
void attention_forward_at(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& pos,
                          Tensor& workspace);
// attention_forward_at with rope_kv_write_at folded in (batch 1): q is rotated as the kernel reads it (q
// itself is left as it is), and k_new rotated and v_new (each [1, Hkv · D]) are written to row pos of the
// caches k, v by the block that reads that row. The same bits as rope_forward on q and k_new, the row
// written, then attention_forward_at. k_new null: attention_forward_at.
void attention_rope_forward_at(Tensor& out, const Tensor& q, const Tensor* k_new, const Tensor* v_new,
                               Tensor& k, Tensor& v, const Tensor& pos, const Tensor* inv_freq,
                               Tensor& workspace);
// Training attention (ops/attention.h): whole sequences, causal, GQA; seq_ids I32 [B, T] (optional, on
// the device) confines each query to its own packed example. q [B, T, Hq, D]; k, v [B, T, Hkv, D] (one
// float dtype, D <= 256); out BF16/F32/F16, lse F32 [B, T, Hq] (natural log). bf16 q/k/v with D
// 32/64/96/128 run on the tensor cores (flash-attention 2 style), everything else on simple kernels.
void attention_forward_train(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor* seq_ids = nullptr);
// dq, dk, dv (BF16/F32/F16) += the gradients, from dout and the saved out, lse; summed in f32 (atomics:
// reproducible to rounding, not bit for bit). The tensor cores need bf16 dout too.
void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor* seq_ids = nullptr);

// out[N, F] = silu(gate) * up.
void swiglu_forward(Tensor& out, const Tensor& gate, const Tensor& up);

// x += y (same element count; the same dtype on the CPU, any F32/BF16/F16 pair on CUDA, summed in f32).
void add_inplace(Tensor& x, const Tensor& y);
// x[N, C] += y, then out[N, C] = rmsnorm(x) * weight[C], one launch; equals add_inplace followed by
// rmsnorm_forward bit for bit. x, y, out share a dtype.
void add_rmsnorm(Tensor& x, const Tensor& y, Tensor& out, const Tensor& weight, float eps);

// Chunked LM-head cross-entropy (ops/loss.h) with cuBLASLt: hidden [N, C] and lm_head [V, C] share a dtype
// (BF16 or F32), labels I32 [N] on the device; dhidden F32/BF16 and dlm_head F32 accumulate. Logits and
// the softmax are f32; the logits gradient is rounded to lm_head's dtype for the two GEMMs.
LossSum cross_entropy_forward_backward(const Tensor& hidden, const Tensor& lm_head, const Tensor& labels,
                                       Tensor* dhidden, Tensor* dlm_head, float grad_scale,
                                       int64_t chunk_rows);

// out = in converted to out's dtype (F32/BF16/F16), same element count.
void convert(Tensor& out, const Tensor& in);

// Backward ops (formulas beside their declarations in ops/<family>.h), f32 math; gradients accumulate
// (+=) into what the caller passes, rope_backward works in place. Each tensor of the element-wise and
// row ops is BF16 or F32, independently of the others.
// dx[N, C] += ..., dweight[C] += ... (optional); dout, x [N, C]; weight [C]. dweight is deterministic.
void rmsnorm_backward(Tensor& dx, Tensor* dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      float eps);
// In place on dx[N, H, D]: rotation by −a; positions I32 [N], inv_freq F32 [D/2], on the device.
void rope_backward(Tensor& dx, const Tensor& positions, const Tensor& inv_freq);
// dgate, dup, dout, gate, up: one shape.
void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up,
                     bool accumulate);
// dtable F32 [V, C] += scatter of dout [N, C] by ids I32 [N] (atomicAdd); ids checked before any write.
void embedding_backward(Tensor& dtable, const Tensor& ids, const Tensor& dout);
// dx[N, I] += dy·w, dw[O, I] += dyᵀ·x, db[O] += Σ_n dy (each when non-null), cuBLASLt with beta = 1.
// dy, x, w all BF16 or all F32; dx BF16 or F32 (F32 for F32 inputs); dw, db F32.
void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x, const Tensor& w);

}  // namespace cuda
}  // namespace qtune
#endif  // QTUNE_HAVE_CUDA
