// PromptEncoder: the reparametrisation networks PEFT trains in front of the virtual tokens, with PEFT's
// parameter names, init and math, forward and backward (CPU, F32; they are tiny):
//   P-tuning (MLP):         out = W4·relu(W2·relu(W0·E + b0) + b2) + b4     E [P, C], out [P, C]
//     prompt_encoder.default.embedding.weight [P, C], mlp_head.{0,2,4}.{weight,bias}
//   prefix tuning (prefix_projection): out = W2·tanh(W0·E + b0) + b2        E [P, C'], out [P, L·2·C']
//     prompt_encoder.default.embedding.weight [P, C'], transform.{0,2}.{weight,bias}
// PEFT saves only the output (the "prompt_embeddings" of the folder), so the encoder exists while training.
// Init as torch: embedding N(0, 1); Linear weight and bias U(±1/√fan_in); prefix init_weights "zero" zeros
// the last Linear.
//
//   PromptEncoder enc = PromptEncoder::p_tuning(P, C, H, seed);
//   Tensor out = enc.forward();                  // [P, C]
//   enc.backward(d_out, grads);                  // grads[i] += d(param i), in params() order
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace qtune {

class PromptEncoder {
 public:
  enum class Kind { PTuningMlp, PrefixProjection };

  static PromptEncoder p_tuning(int64_t virtual_tokens, int64_t token_dim, int64_t hidden, uint64_t seed);
  static PromptEncoder prefix_projection(int64_t virtual_tokens, int64_t token_dim, int64_t hidden,
                                         int64_t out_dim, bool zero_init, uint64_t seed);

  Kind kind() const { return kind_; }
  // (PEFT name, tensor) of every trainable parameter, F32 CPU, in a fixed order (the embedding first).
  struct Param {
    std::string name;
    Tensor value;
  };
  const std::vector<Param>& params() const { return params_; }
  std::vector<Param>& mutable_params() { return params_; }

  // The encoder's output from the current parameters: F32 [P, out_dim].
  Tensor forward() const;
  // grads (one per param, same shapes, F32 CPU) += d(loss)/d(param) given d_out [P, out_dim].
  void backward(const Tensor& d_out, std::vector<Tensor*>& grads) const;

 private:
  Kind kind_ = Kind::PTuningMlp;
  std::vector<Param> params_;
};

}  // namespace qtune
