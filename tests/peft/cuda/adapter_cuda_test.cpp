// IA3, bottleneck adapters and several adapters on a CUDA model (bf16 weights and activations, adapter
// math in f32, f32 logits):
//  - the adapter ops (peft/adapter_ops.h) against the CPU op on the same (bf16-rounded) random inputs;
//  - PEFT's IA3 folders: logits vs PEFT f32 within the project's bf16 rule (<= 2x PEFT's own error with the
//    bf16 base, logits_bf16 in the fixture), greedy tokens;
//  - a bottleneck adapter: CUDA logits vs the CPU model with the same adapter, within 2x the base model's
//    CUDA-vs-CPU error (+ slack);
//  - merge / unmerge of LoRA and IA3 into the BF16 weights: merged logits at the bf16 rule, weights back
//    within bf16 rounding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "core/allocator.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/generate.h"
#include "peft/adapter_ops.h"
#include "peft/adapter_set.h"
#include "peft/bottleneck_model.h"
#include "peft/ia3_model.h"

using namespace qtune;

namespace {

const std::string kFix = std::string(QTUNE_FIXTURES) + "/peft/";

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

Tensor randn(const Shape& s, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(shape_numel(s));
  for (float& x : v) x = nd(rng);
  return Tensor::from_f32(v, s);
}

// A CPU F32 tensor rounded through BF16 (what a BF16 device tensor holds).
Tensor bf16_rounded(const Tensor& t) {
  return t.to_dtype(DType::BF16).to_dtype(DType::F32);
}

Tensor on_gpu(const Tensor& t, DType dt) {
  return t.to_dtype(dt).to(Device::CUDA);
}

std::string base_of(const std::string& name) {
  return std::string(QTUNE_SOURCE_DIR) + "/" +
         (name == "ia3_bias"      ? "tests/fixtures/model/llama_bias"
          : name == "ia3_bundled" ? "models/qtune-tiny-8m"
                                  : "tests/fixtures/model/llama");
}

}  // namespace

TEST(AdapterOpsCuda, MatchTheCpuOps) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  const int64_t N = 300, J = 520;
  Tensor x = bf16_rounded(randn({N, J}, 1)), g = bf16_rounded(randn({N, J}, 2)), s = randn({J}, 3, 0.5f);
  Tensor sd = s.to(Device::CUDA);
  for (DType dt : {DType::F32, DType::BF16}) {
    // scale_columns, out in each dtype.
    Tensor want = Tensor::empty({N, J}, DType::F32);
    scale_columns(want, x, s);
    Tensor out = Tensor::empty({N, J}, dt, Device::CUDA);
    scale_columns(out, on_gpu(x, dt), sd);
    const double e1 = rel_err(out, want);
    EXPECT_LE(e1, dt == DType::F32 ? 1e-6 : 4e-3) << dtype_name(dt);
    // dx += g ⊙ s and ds += Σ g ⊙ x, dx starting from x.
    Tensor dx_want = x.clone(), ds_want = Tensor::zeros({J}, DType::F32);
    scale_columns_backward(&dx_want, &ds_want, g, &x, &s);
    Tensor dx = on_gpu(x, dt), ds = Tensor::zeros({J}, DType::F32, Device::CUDA), xd = on_gpu(x, dt);
    scale_columns_backward(&dx, &ds, on_gpu(g, dt), &xd, &sd);
    const double e2 = rel_err(dx, dx_want), e3 = rel_err(ds, ds_want);
    Tensor bias_want = Tensor::zeros({J}, DType::F32), bias = Tensor::zeros({J}, DType::F32, Device::CUDA);
    scale_columns_backward(nullptr, &bias_want, g, nullptr, nullptr);
    scale_columns_backward(nullptr, &bias, on_gpu(g, dt), nullptr, nullptr);
    const double e4 = rel_err(bias, bias_want);
    std::printf("%s: scale_columns %.2e, dx %.2e, ds %.2e, column sum %.2e\n", dtype_name(dt), e1, e2, e3,
                e4);
    EXPECT_LE(e2, dt == DType::F32 ? 1e-6 : 4e-3);
    EXPECT_LE(e3, 1e-5);
    EXPECT_LE(e4, 1e-5);
  }
  for (AdapterAct act : {AdapterAct::Relu, AdapterAct::Silu, AdapterAct::Gelu, AdapterAct::Tanh}) {
    Tensor z = randn({N, 64}, 4, 2.0f), da = randn({N, 64}, 5);
    Tensor a_want = Tensor::empty(z.shape(), DType::F32), dz_want = Tensor::empty(z.shape(), DType::F32);
    adapter_act_forward(a_want, z, act);
    adapter_act_backward(dz_want, da, z, act);
    Tensor zd = z.to(Device::CUDA), a = Tensor::empty(z.shape(), DType::F32, Device::CUDA);
    Tensor dz = Tensor::empty(z.shape(), DType::F32, Device::CUDA);
    adapter_act_forward(a, zd, act);
    adapter_act_backward(dz, da.to(Device::CUDA), zd, act);
    EXPECT_LE(rel_err(a, a_want), 1e-6) << adapter_act_name(act);
    EXPECT_LE(rel_err(dz, dz_want), 1e-6) << adapter_act_name(act);
  }
}

TEST(AdapterCuda, Ia3LogitsMatchPeft) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  for (const char* name : {"ia3_default", "ia3_bias", "ia3_bundled"}) {
    auto exp = SafetensorsFile::open(kFix + name + "/expected.safetensors");
    LlamaModel model = LlamaModel::load(base_of(name), Device::CUDA);
    Tensor ids = exp->get("ids").clone();
    Ia3Model ia3 = Ia3Model::load(model, kFix + name);
    Tensor got = model.forward(ids);
    ASSERT_TRUE(got.is_cuda());
    const double err = rel_err(got, exp->get("logits"));
    const double ref = rel_err(exp->get("logits_bf16"), exp->get("logits"));
    std::vector<float> row = ids.to_f32_vector(), want = exp->get("greedy").to_f32_vector();
    std::vector<int32_t> prompt;
    for (int64_t t = 0; t < ids.size(1); ++t) prompt.push_back((int32_t)row[t]);
    GenerateOptions o;
    o.max_new_tokens = (int)want.size();
    std::vector<int32_t> toks = generate(model, prompt, o).tokens;
    int same = 0;
    for (size_t i = 0; i < toks.size() && i < want.size(); ++i) same += toks[i] == (int32_t)want[i];
    std::printf(
        "cuda %-12s IA3 logits rel err vs PEFT f32 %.2e (PEFT bf16 %.2e); greedy %d/%zu as PEFT f32\n", name,
        err, ref, same, want.size());
    EXPECT_LE(err, std::max(1e-2, 2 * ref)) << name;
    ia3.detach();
    EXPECT_LE(rel_err(model.forward(ids), exp->get("base_logits")), 2e-2) << name;
  }
}

TEST(AdapterCuda, BottleneckMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  const std::string dir = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";
  LlamaModel cpu = LlamaModel::load(dir), gpu = LlamaModel::load(dir, Device::CUDA);
  Tensor ids = Tensor::from_i32({0, 412, 77, 1290, 8, 301, 2047, 19, 5, 66, 900, 12}, {2, 6});
  const double base_err = rel_err(gpu.forward(ids), cpu.forward(ids));
  BottleneckConfig cfg;
  cfg.bottleneck_size = 16;
  cfg.non_linearity = AdapterAct::Silu;
  BottleneckModel a = BottleneckModel::create(cpu, cfg, 4);
  int k = 0;
  for (NamedTensor t : a.trainable())  // the tensors share the masters' storage
    if (t.name.find("adapter_down.weight") == std::string::npos)
      t.tensor.copy_from(randn(t.tensor.shape(), 10 + k++, 0.05f));
  a.refresh();
  const std::string saved = testing::TempDir() + "/cuda_bottleneck";
  a.save(saved);
  BottleneckModel b = BottleneckModel::load(gpu, saved);
  Tensor want = cpu.forward(ids), got = gpu.forward(ids);
  const double err = rel_err(got, want);
  a.detach();
  std::printf("cuda bottleneck logits vs CPU f32 %.2e (base model %.2e; the adapter moves logits by %.2e)\n",
              err, base_err, rel_err(want, cpu.forward(ids)));
  EXPECT_LE(err, 2 * base_err + 2e-3);
}

TEST(AdapterCuda, MergeUnmergeInBf16) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine";
  LlamaModel model = LlamaModel::load(std::string(QTUNE_FIXTURES) + "/model/llama", Device::CUDA);
  std::vector<std::vector<float>> w0;
  for (auto& [n, lin] : linear_modules(model)) w0.push_back(lin->weight.to_f32_vector());
  AdapterSet set(model);
  set.load("a", kFix + "weighted/a");
  set.load("ia3", kFix + "ia3_default");
  auto wexp = SafetensorsFile::open(kFix + "weighted/expected.safetensors");
  auto iexp = SafetensorsFile::open(kFix + "ia3_default/expected.safetensors");
  for (const char* n : {"a", "ia3"}) {
    const bool lora = std::string(n) == "a";
    Tensor ids = (lora ? wexp : iexp)->get("ids").clone();
    Tensor want = lora ? wexp->get("logits_a") : iexp->get("logits");
    set.set_active(n);
    const double live = rel_err(model.forward(ids), want);
    set.merge();
    ASSERT_TRUE(model.layers()[0].q.weight.is_cuda());
    ASSERT_EQ(model.layers()[0].q.weight.dtype(), DType::BF16);
    const double merged = rel_err(model.forward(ids), want);
    std::vector<std::vector<float>> wm;
    for (auto& [name, lin] : linear_modules(model)) wm.push_back(lin->weight.to_f32_vector());
    set.unmerge();
    // Each bf16 rounding moves an element by at most u = 2^-8 of its size: merging rounds W ± delta (LoRA)
    // or W ⊙ l (IA3), unmerging rounds the result again, so per module
    // ‖W_back − W‖ <= u·(max(‖W_merged‖, ‖W‖) + ‖W‖) (for IA3 the first error divided by l is <= u·|W|).
    double worst = 0, worst_bound = 0;
    size_t i = 0;
    for (auto& [name, lin] : linear_modules(model)) {
      std::vector<float> back = lin->weight.to_f32_vector();
      double e = 0, n0 = 0, nm = 0;
      for (size_t k = 0; k < back.size(); ++k) {
        e += ((double)back[k] - w0[i][k]) * ((double)back[k] - w0[i][k]);
        n0 += (double)w0[i][k] * w0[i][k];
        nm += (double)wm[i][k] * wm[i][k];
      }
      const double bound = std::ldexp(1.0, -8) * (std::max(std::sqrt(nm), std::sqrt(n0)) + std::sqrt(n0));
      worst = std::max(worst, std::sqrt(e / n0));
      worst_bound = std::max(worst_bound, std::sqrt(e) / bound);
      EXPECT_LE(std::sqrt(e), 1.01 * bound) << n << " " << name;
      ++i;
    }
    std::printf(
        "cuda %-3s logits vs PEFT f32: adapter %.2e, merged into bf16 %.2e; weights after unmerge %.2e "
        "(at most %.2f of the bf16 rounding bound)\n",
        n, live, merged, worst, worst_bound);
    EXPECT_LE(merged, std::max(2e-2, 2 * live)) << n;
    set.disable();
  }
}
