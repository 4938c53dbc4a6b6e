// Prompt tuning, P-tuning, prefix tuning and LLaMA-Adapter on a CUDA model (bf16 weights, activations and
// KV cache, f32 logits) against PEFT's float32 logits (tools/make_vtok_fixtures.py). Bound, by the bf16
// rule: at most 2x the error of PEFT itself running the bf16 base model (logits_bf16), both against PEFT
// f32. Greedy tokens (through generate(): DecodeStep's CUDA graph for the virtual-token kinds, the model's
// forward for LLaMA-Adapter) equal PEFT's bf16 greedy tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/allocator.h"
#include "io/safetensors.h"
#include "model/generate.h"
#include "peft/prompt_adapter.h"

using namespace qtune;

namespace {

double rel_err(const Tensor& a, const Tensor& b) {
  std::vector<float> x = a.to_f32_vector(), y = b.to_f32_vector();
  EXPECT_EQ(x.size(), y.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
    num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
    den += (double)y[i] * y[i];
  }
  return std::sqrt(num / den);
}

std::vector<int32_t> ints(const Tensor& t) {
  std::vector<int32_t> v(t.numel());
  for (int64_t i = 0; i < t.numel(); i++) v[i] = t.data<int32_t>()[i];
  return v;
}

}  // namespace

TEST(PromptLearningCuda, LogitsAndGreedyMatchPeft) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  for (const char* name : {"prompt_tuning", "p_tuning", "prefix", "prefix_proj", "adaption"}) {
    const std::string dir = std::string(QTUNE_FIXTURES) + "/peft/" + name;
    auto exp = SafetensorsFile::open(dir + "/expected.safetensors");
    LlamaModel model = LlamaModel::load(std::string(QTUNE_FIXTURES) + "/model/llama", Device::CUDA);
    std::unique_ptr<PromptAdapter> a = load_prompt_adapter(model, dir);
    Tensor ids = exp->get("ids").clone();
    Tensor got;
    if (const VirtualTokens* vt = a->virtual_tokens()) {
      KVCache cache = model.make_cache(ids.size(0), vt->count() + ids.size(1));
      got = forward_with_virtual_tokens(model, ids, cache, *vt);
    } else {
      got = model.forward(ids);
    }
    ASSERT_TRUE(got.is_cuda());
    double err = rel_err(got, exp->get("logits"));
    double ref = rel_err(exp->get("logits_bf16"), exp->get("logits"));
    std::printf("cuda %-13s logits rel err vs PEFT f32 %.2e (PEFT bf16 %.2e)\n", name, err, ref);
    EXPECT_LE(err, 2 * ref + 1e-3) << name;
    std::vector<int32_t> prompt = ints(ids);
    prompt.resize(ids.size(1));
    GenerateOptions opt;
    opt.max_new_tokens = (int)exp->get("greedy_bf16").numel();
    opt.eos_token_ids = model.config().eos_token_ids;
    GenerateResult r = generate(model, prompt, opt);  // the model's attached virtual tokens
    std::printf("cuda %-13s greedy via %s\n", name, r.decode_path.c_str());
    EXPECT_EQ(r.tokens, ints(exp->get("greedy_bf16"))) << name;
  }
}
