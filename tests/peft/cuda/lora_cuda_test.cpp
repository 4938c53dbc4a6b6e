// LoRA adapters on a CUDA model (bf16 weights and activations, the LoRA term in f32 as PEFT computes it;
// f32 logits) against PEFT's float32 logits (tests/fixtures/peft, tools/make_peft_fixtures.py). Bound, by
// the project's rule for bf16 kernels: at most 2x the error of PEFT itself running the bf16 base model
// (logits_bf16 in the fixture), both measured against PEFT f32. dora_qv: DoRA's row norm and rescaling
// (peft/dora_ops.h) on the GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/allocator.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "peft/lora_model.h"

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

}  // namespace

TEST(LoraCuda, LogitsMatchPeft) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  for (const char* name : {"lora_qv", "rslora_all", "bias_mts", "dora_qv"}) {
    const std::string dir = std::string(QTUNE_FIXTURES) + "/peft/" + name;
    auto exp = SafetensorsFile::open(dir + "/expected.safetensors");
    LoraConfig cfg = read_lora_config(dir + "/adapter_config.json");
    LlamaModel model =
        LlamaModel::load(std::string(QTUNE_SOURCE_DIR) + "/" + cfg.base_model_name_or_path, Device::CUDA);
    Tensor ids = exp->get("ids").clone();
    double base_err = rel_err(model.forward(ids), exp->get("base_logits"));
    LoraModel lora = LoraModel::load(model, dir);
    Tensor got = model.forward(ids);
    ASSERT_TRUE(got.is_cuda());
    double err = rel_err(got, exp->get("logits"));
    double ref = rel_err(exp->get("logits_bf16"), exp->get("logits"));
    std::printf("cuda %-11s logits rel err vs PEFT f32 %.2e (PEFT bf16 %.2e; base model %.2e)\n", name, err,
                ref, base_err);
    EXPECT_LE(err, std::max(1e-2, 2 * ref)) << name;
    lora.detach();
    EXPECT_LE(rel_err(model.forward(ids), exp->get("base_logits")), 2e-2) << name;
  }
}
