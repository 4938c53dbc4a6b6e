// Text generation for one sequence (batch 1): prefill the prompt in one forward, then decode a token at a
// time over the KV cache, sampling each with a Sampler, until an EOS id, max_new_tokens, or the callback
// says stop. Output matches transformers' generate() token for token when greedy (its EOS token is
// included in the output, as HF does).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/llama_model.h"
#include "model/sampling.h"
#include "model/virtual_tokens.h"

namespace qtune {

struct GenerateOptions {
  int max_new_tokens = 128;
  SamplingOptions sampling;        // temperature 0 = greedy
  std::vector<int> eos_token_ids;  // stop after producing any of these (empty: never)
  // Called with each new token as soon as it is chosen (streaming); return false to stop.
  std::function<bool(int32_t token)> on_token;
  // Prompt tuning / P-tuning / prefix tuning: virtual tokens ahead of the prompt (virtual_tokens.h; null:
  // the model's own, LlamaModel::virtual_tokens()); they count against the model's context.
  const VirtualTokens* virtual_tokens = nullptr;
};

enum class StopReason { Eos, MaxNewTokens, Callback, ContextFull };
const char* stop_reason_name(StopReason r);

struct GenerateResult {
  std::vector<int32_t> tokens;  // the new tokens (not the prompt)
  StopReason stop = StopReason::MaxNewTokens;
  double prefill_seconds = 0, decode_seconds = 0;
  // How the decode steps ran: "graph" (DecodeStep replaying a CUDA graph), "eager_step" (DecodeStep's
  // launches, e.g. when capture failed: then decode_note says why) or "forward" (LlamaModel::forward).
  std::string decode_path = "forward";
  std::string decode_note;
};

// Throws ErrorKind::Usage for an empty prompt and ErrorKind::Shape for ids outside the vocabulary. Stops
// with ContextFull when virtual tokens + prompt + new tokens fill the context (max_position_embeddings, or
// the sliding window, which qtune does not implement).
GenerateResult generate(const LlamaModel& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& opt);

}  // namespace qtune
