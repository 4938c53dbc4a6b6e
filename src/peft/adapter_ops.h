// The few elementwise ops the non-LoRA adapters need, forward and backward, on the CPU (F32) and CUDA:
//   IA3           y = x ⊙ s (s a per-column vector), and its backward dx += g ⊙ s, ds += Σ_n g ⊙ x;
//   bottleneck    a = act(z) for its nonlinearity, and dz = da ⊙ act'(z); bias gradients Σ_n g.
// Dispatch is by the tensors' device (all on one device). The adapters' own math runs in f32, as PEFT keeps
// adapter weights in f32; activations on CUDA may be BF16 where noted.
#pragma once
#include <string>

#include "core/tensor.h"

namespace qtune {

// out[N, J] = x[N, J] ⊙ s[J] (out may be x). s F32. CPU: out, x F32. CUDA: out, x F32 or BF16 (any pair),
// the product in f32 rounded once to out's dtype.
void scale_columns(Tensor& out, const Tensor& x, const Tensor& s);

// The backward of scale_columns and column sums, each part only when its pointer is non-null:
//   dx[N, J] += g ⊙ s          (s null: += g)
//   ds[J]    += Σ_n g ⊙ x      (x null: Σ_n g, a bias gradient)
// ds F32. CPU: all F32. CUDA: g, x, dx F32 or BF16 (any mix).
void scale_columns_backward(Tensor* dx, Tensor* ds, const Tensor& g, const Tensor* x, const Tensor* s);

// The bottleneck adapters' nonlinearities: relu, silu (alias swish), gelu (erf form, torch's default),
// tanh.
enum class AdapterAct { Relu, Silu, Gelu, Tanh };
// Parses a name; throws ErrorKind::Config listing the known names, prefixed by context.
AdapterAct adapter_act_from_name(const std::string& name, const std::string& context = "");
const char* adapter_act_name(AdapterAct a);

// a = act(z), dz = da ⊙ act'(z) (overwritten). F32, same shapes, a may be z.
void adapter_act_forward(Tensor& a, const Tensor& z, AdapterAct act);
void adapter_act_backward(Tensor& dz, const Tensor& da, const Tensor& z, AdapterAct act);

}  // namespace qtune
