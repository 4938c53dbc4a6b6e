// Backward of a model Linear (model/linear.h), whatever stores its weight:
//   dx[N, I] += dy[N, O]·W[O, I]       for dense, NF4/FP4 and LLM.int8 weights;
//   dw[O, I] += dyᵀ·x  only for a dense weight, db[O] += Σ_n dy, each only when asked (non-null).
// A quantized weight is frozen (QLoRA): it is dequantized tile by tile (a block of output rows at a time,
// about 1M f32 values) into a reused buffer and multiplied, so the dense weight never exists whole. The
// dequantized values are the ones the forward multiplies with (bitsandbytes' dequantize_4bit rounded to
// the checkpoint and compute dtypes; int8 q·SCB/127), so dx is the exact gradient of the forward's product.
//
// A Linear may carry an adapter (model/linear.h: LinearAdapter, out += f(x)). To train through it, the
// adapter also implements TrainableAdapter below (peft/ does, for LoRA ...): linear_backward then adds
// the adapter's d(x) and lets it accumulate the gradients of its own registered parameters. An adapter
// without that interface cannot be backpropagated and throws ErrorKind::Unsupported naming the layer.
#pragma once
#include "core/tensor.h"
#include "model/linear.h"
#include "train/trainable.h"

namespace qtune {

struct TrainableAdapter {
  virtual ~TrainableAdapter() = default;
  // The backward of LinearAdapter::apply: dx[N, I] += d(f)/dx · dy (when dx is non-null) and, for each of
  // the adapter's parameters registered in params (by its PEFT name), grad += d(f)/dparam · dy. x is the
  // Linear's forward input [N, I] (for dropout, the adapter must reproduce its forward mask itself).
  virtual void backward(Tensor* dx, const Tensor& dy, const Tensor& x, TrainableParams* params) const = 0;
  // Adapters that change the base product's input or output (IA3's x ⊙ l or out ⊙ l, a bottleneck
  // adapter's out + g(out)) take over the whole backward of their Linear: they return true after
  // accumulating dx (and dw/db when non-null) through linear_backward_base with their own input and
  // d(base output), and the gradients of their parameters. Default false: the path described above.
  virtual bool backward_linear(const Linear& lin, Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy,
                               const Tensor& x, TrainableParams* params) const {
    return false;
  }
  // True when backward_linear above takes over (then it is called with dx already holding what to add to).
  virtual bool takes_over_backward() const { return false; }
};

// x: the forward input [N, I] (needed only for dw); dy [N, O]. Gradients accumulate, except dx when
// overwrite_dx: then its old contents are never read (the caller need not zero it; the base product's GEMM
// writes it with beta = 0). params holds the adapter's gradients (null: all frozen). Asking for dw of a
// quantized Linear throws ErrorKind::Unsupported naming the layer. CPU: F32. CUDA: dy, x BF16; dx BF16 or
// F32; a quantized weight is dequantized whole into one BF16 buffer per call (the caching allocator reuses it
// across layers).
void linear_backward(const Linear& lin, Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x,
                     TrainableParams* params = nullptr, bool overwrite_dx = false);

// The same for the base product alone (the Linear's adapter, if any, is ignored).
void linear_backward_base(const Linear& lin, Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy,
                          const Tensor& x);

// Rows [o0, o0 + rows) of a quantized Linear's weight, dequantized into buf [rows, I] (for tests and the
// backward above).
void dequant_weight_rows(const Linear& lin, int64_t o0, int64_t rows, float* buf);

}  // namespace qtune
