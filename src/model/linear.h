// A linear layer, y[N, O] = x[N, I]·Wᵀ + b, as the model's blocks see it: one forward(out, x) call.
// Everything about how the weight is stored stays inside this struct, so later variants plug in here
// without touching the block code: quantized weights (NF4/FP4 blocks + absmax, int8 + scales) become
// other storage members dispatched in forward(), and adapters (LoRA's x·Aᵀ·Bᵀ·scale, IA3's per-feature
// scaling) become extra terms applied after the base product.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace qtune {

struct Quant4Linear;  // model/quant_linear.h
struct Int8Linear;

// An adapter on a Linear (peft/ implements LoRA, IA3 and bottleneck adapters with it), on the model's
// device and dtype. apply() runs after the base product and may change out[N, O] in place from itself and
// x[N, I]: LoRA adds f(x), IA3 scales out by a vector, a bottleneck adapter adds g(out). Adapters that
// change what the weight sees (IA3 on feed-forward layers: W·(x ⊙ l)) also override transform_input().
struct LinearAdapter {
  virtual ~LinearAdapter() = default;
  virtual void apply(Tensor& out, const Tensor& x) const = 0;
  // True: the base product reads transform_input(x) [N, I] (x's dtype and device) instead of x.
  virtual bool transforms_input() const { return false; }
  virtual Tensor transform_input(const Tensor& x) const { return x; }
};

struct Linear {
  std::string name;  // HF prefix, e.g. "model.layers.0.self_attn.q_proj"
  Tensor weight;     // [O, I] dense (F32 on the CPU, BF16 on CUDA); undefined when quantized
  Tensor bias;       // [O] or undefined
  std::shared_ptr<const Quant4Linear> q4;        // set: NF4/FP4 weight (bitsandbytes Linear4bit)
  std::shared_ptr<const Int8Linear> q8;          // set: LLM.int8 weight (bitsandbytes Linear8bitLt)
  std::shared_ptr<const LinearAdapter> adapter;  // set: its term is added to the output (LoRA ...)

  bool quantized() const { return q4 || q8; }
  int64_t out_features() const;
  int64_t in_features() const;
  // out[N, O] = x[N, I]·Wᵀ (+ b), with the adapter (if any). out may be F32 when x is BF16 (CUDA).
  void forward(Tensor& out, const Tensor& x) const;
  // The base product alone, out = x·Wᵀ (+ b): no adapter (for adapters' backward recomputes).
  void forward_base(Tensor& out, const Tensor& x) const;
  // Dense, without bias or adapter.
  bool plain() const { return !quantized() && !adapter && !bias.defined() && weight.defined(); }
};

// outs[j] = lins[j].forward(x) for Linears that share their input (q/k/v, gate/up). At decode on the GPU
// it is one launch when all are plain (ops/matmul.h linear_forward_multi), all 4-bit without adapters
// (quant/quant_cuda.h gemv_4bit_cuda_parts) or all LLM.int8 without adapters (int8_gemv_row_cuda, at one
// row of x); otherwise, and always on the CPU, one forward each.
void linear_forward_shared(const std::vector<Tensor*>& outs, const Tensor& x,
                           const std::vector<const Linear*>& lins);

}  // namespace qtune
