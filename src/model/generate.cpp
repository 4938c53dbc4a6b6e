// generate(): prefill + token-by-token decode over a KV cache sized for prompt + max_new_tokens.
#include "model/generate.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "model/decode_step.h"
#ifdef QTUNE_HAVE_CUDA
#include "model/cuda/sampling_cuda.h"
#endif

namespace qtune {

namespace {

// Environment switches for A/B measurements: QTUNE_DECODE_STEP=0 decodes through LlamaModel::forward,
// QTUNE_DECODE_GRAPH=0 keeps DecodeStep but launches eagerly, QTUNE_DECODE_FUSE=0 splits its fused
// residual-add + RMSNorm launches.
bool env_off(const char* name) {
  const char* v = std::getenv(name);
  return v && std::strcmp(v, "0") == 0;
}

}  // namespace

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Eos:
      return "eos";
    case StopReason::MaxNewTokens:
      return "max_new_tokens";
    case StopReason::Callback:
      return "callback";
    case StopReason::ContextFull:
      return "context_full";
  }
  return "?";
}

GenerateResult generate(const LlamaModel& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& opt) {
  using clock = std::chrono::steady_clock;
  GenerateResult res;
  if (prompt.empty()) throw_error(ErrorKind::Usage, "generate: the prompt has no tokens");
  if (opt.max_new_tokens <= 0) return res;
  const VirtualTokens* vt = opt.virtual_tokens ? opt.virtual_tokens : model.virtual_tokens();
  const int64_t Pv = vt ? vt->count() : 0;        // virtual tokens first
  const int64_t P = Pv + (int64_t)prompt.size();  // then the prompt
  int64_t limit = model.config().max_position_embeddings;
  if (model.config().sliding_window > 0) limit = std::min<int64_t>(limit, model.config().sliding_window);
  if (P >= limit) {
    if (Pv > 0)
      throw_error(ErrorKind::Usage, "generate: the adapter's ", Pv, " virtual tokens and the prompt's ",
                  prompt.size(), " tokens fill the model's context of ", limit);
    throw_error(ErrorKind::Usage, "generate: the prompt has ", P, " tokens; the model's context is ", limit);
  }
  int64_t max_seq = std::min<int64_t>(P + opt.max_new_tokens, limit);
  KVCache cache = model.make_cache(1, max_seq);
  Sampler sampler(opt.sampling);
  const int64_t V = model.config().vocab_size;

  auto t0 = clock::now();
  Tensor ids = Tensor::from_i32(prompt, {1, (int64_t)prompt.size()});
  Tensor logits = Pv > 0 ? forward_with_virtual_tokens(model, ids, cache, *vt, true)
                         : model.forward(ids, cache, 0, true);  // [1, 1, V]
  std::vector<float> row = logits.to_f32_vector();
  const float* cur = row.data();  // the logits the next token is sampled from
  auto t1 = clock::now();
  res.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  int64_t pos = P;
  // Batch-1 CUDA decode with dense or 4-bit weights: persistent buffers and one CUDA graph per step.
  std::unique_ptr<DecodeStep> step;
  if (!env_off("QTUNE_DECODE_STEP") && DecodeStep::supported(model, cache))
    step = std::make_unique<DecodeStep>(model, cache, !env_off("QTUNE_DECODE_GRAPH"),
                                        !env_off("QTUNE_DECODE_FUSE"));
  // Greedy decoding through the step takes the argmax on the GPU (the same token as the sampler's): only
  // the token crosses to the host, not the vocabulary's logits (0.3 ms per token of the 8B's 2.6 ms when
  // each step's logits were copied back and scanned on the CPU, bench/NOTES.md).
  const bool greedy = opt.sampling.temperature <= 0.0f;
  int32_t picked = -1;  // the greedy token picked on the GPU, when it was
  // The forward path's logits (adapters, CPU offload) on the GPU: the same pick there.
#ifdef QTUNE_HAVE_CUDA
  std::unique_ptr<GreedyPicker> picker;
#endif
  auto pick_on_gpu = [&](const Tensor& lg) {
#ifdef QTUNE_HAVE_CUDA
    if (greedy && lg.is_cuda() && lg.dtype() == DType::F32) {
      if (!picker) picker = std::make_unique<GreedyPicker>();
      picked = picker->pick(lg);
      return true;
    }
#endif
    (void)lg;
    return false;
  };
  while (true) {
    int32_t tok = picked >= 0 ? picked : sampler.sample(cur, V);
    res.tokens.push_back(tok);
    if (opt.on_token && !opt.on_token(tok)) {
      res.stop = StopReason::Callback;
      break;
    }
    if (std::find(opt.eos_token_ids.begin(), opt.eos_token_ids.end(), tok) != opt.eos_token_ids.end()) {
      res.stop = StopReason::Eos;
      break;
    }
    if ((int)res.tokens.size() >= opt.max_new_tokens) {
      res.stop = StopReason::MaxNewTokens;
      break;
    }
    if (P + (int64_t)res.tokens.size() >= limit) {  // the sequence fills the model's context
      res.stop = StopReason::ContextFull;
      break;
    }
    if (step) {
      step->run(tok, pos);
      if (greedy)
        picked = step->greedy_token();
      else
        cur = step->host_logits();  // [V]
    } else {
      Tensor lg = model.forward(Tensor::from_i32({tok}, {1, 1}), cache, pos, true);  // [1, 1, V]
      if (!pick_on_gpu(lg)) {
        row = lg.to_f32_vector();
        cur = row.data();
      }
    }
    pos++;
  }
  res.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  if (step) {
    res.decode_path = step->graph_active() ? "graph" : "eager_step";
    res.decode_note = step->graph_error();
  }
  return res;
}

}  // namespace qtune
