// DecodeStep: the batch-1, one-token decode step of a LlamaModel on CUDA, with every buffer allocated
// once and the token's position read by the kernels from device memory, so the whole step (32 layers of
// norm, fused q/k/v GEMV, split-K attention with the RoPE and the cache write folded in, o GEMV, residual,
// norm, fused gate/up GEMV, SwiGLU, down GEMV, residual; final norm, lm_head) is captured once as a CUDA
// graph and replayed at every position. The first step runs eagerly (it also loads the kernels); the
// second captures. Each residual add shares its launch with the RMSNorm after it: with 4-bit (or LLM.int8)
// q/k/v and gate/up weights both run inside the fused 4-bit GEMV (int8 row GEMV) that reads the norm's
// output (5 launches per layer, 6 when the attention splits its keys and combines them: the SwiGLU runs in
// the 4-bit gate/up GEMV, or in the int8 down projection; the residual then alternates between two
// buffers), otherwise in add_rmsnorm. Linears with a bias (Qwen2's q/k/v), a 4-bit or an LLM.int8 weight
// run too: q/k/v and gate/up through linear_forward_shared (one launch for each group when all are 4-bit
// or all LLM.int8), the rest through Linear::forward.
// Graph and eager steps launch the same kernels with the same arguments: their logits are identical.
//
//   if (DecodeStep::supported(model, cache)) {
//     DecodeStep step(model, cache);
//     const Tensor& logits = step.run(token, pos);   // F32 [1, V] on the GPU, valid until the next run
//   }
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "model/kv_cache.h"
#include "model/llama_model.h"

namespace qtune {

class DecodeStep {
 public:
  // True for a CUDA model with a batch-1 cache whose decoder and lm_head Linears are all dense or 4-bit
  // (dense, 4-bit or LLM.int8; no adapter, no AttentionAdapter: those keep LlamaModel::forward's path), all
  // on the GPU (no module offloaded to the CPU by a device map).
  static bool supported(const LlamaModel& model, const KVCache& cache);

  // model and cache must outlive the step. use_graph false: always eager launches (for tests).
  // fuse_add_norm false: separate residual-add, RMSNorm and SwiGLU launches (for A/B measurements and
  // tests; the same logits).
  DecodeStep(const LlamaModel& model, KVCache& cache, bool use_graph = true, bool fuse_add_norm = true);
  ~DecodeStep();
  DecodeStep(const DecodeStep&) = delete;
  DecodeStep& operator=(const DecodeStep&) = delete;

  // Runs token at position pos (cache rows [0, pos) hold the earlier tokens; row pos is written).
  // Returns F32 logits [1, V] on the GPU, overwritten by the next run.
  const Tensor& run(int32_t token, int64_t pos);

  // After run(), each waiting for the step: the token greedy decoding picks (qtune::argmax of the
  // logits), found on the GPU so that only its index crosses to the host; or the logits [V] in pinned
  // host memory, valid until the next call.
  int32_t greedy_token();
  const float* host_logits();

  bool graph_active() const;                               // the last run replayed the graph
  const std::string& graph_error() const { return err_; }  // why capture failed, if it did

 private:
  void launch_step();  // queues the whole step (eagerly, or into a capture)

  const LlamaModel& model_;
  KVCache& cache_;
  bool use_graph_, fuse_add_norm_;
  bool norm_in_gemv_ = false;  // the adds and norms run inside the GEMVs (fuse_add_norm; all 4-bit or int8)
  bool glu_in_gemv_ = false;   // and the SwiGLU inside the 4-bit gate/up GEMV (norm_in_gemv_, gate, up alike)
  bool glu_in_down_ = false;   // or the SwiGLU inside the int8 down projection's launch (fuse_add_norm)
  int runs_ = 0;
  std::string err_;
  int32_t host_io_[2] = {0, 0};
  Tensor io_;  // I32 [2] on the GPU: token, position
  Tensor ids_, pos_;
  Tensor x_, x2_, h_, q_, k_, v_, att_, proj_, g_, u_, a_, hn_, logits_, ws_;
  std::shared_ptr<void> host_;  // pinned: the logits' row (host_logits)
  struct Greedy;
  std::unique_ptr<Greedy> greedy_;  // greedy_token's device argmax
  struct Graph;
  std::unique_ptr<Graph> graph_;
};

}  // namespace qtune
