// Quantized models on CUDA: the bundled model (models/qtune-tiny-8m) loaded with load_in_4bit (NF4 + double
// quant, FP4) and load_in_8bit onto the GPU against the same options on the CPU: storage quantized on the
// GPU is what bitsandbytes' CUDA kernels write (the CPU's is what its CPU path writes), logits agree within
// the bf16 tolerance of the dense CUDA model (2e-2, llama_cuda_test.cpp), and greedy text matches token for
// token except at a near tie (the first differing step must have a CPU top-2 margin within twice the largest
// |GPU − CPU| logit there). Folders saved by transformers + bitsandbytes load onto CUDA and give
// bitsandbytes' logits within 2e-2.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "../../quant/bnb_cuda_check.h"
#include "../model_test_util.h"
#include "core/allocator.h"
#include "io/safetensors.h"
#include "model/generate.h"
#include "model/llama_model.h"
#include "model/quant_linear.h"
#include "model/quantize_folder.h"
#include "quant/int8.h"
#include "quant/quant4.h"
#include "tokenizer/tokenizer.h"

using namespace qtune;
using namespace qtune_test;

namespace {

#define REQUIRE_GPU()                                             \
  do {                                                            \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU present"; \
  } while (0)

std::string bundled_dir() {
  return std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";
}

std::vector<int32_t> bundled_prompt() {
  std::ifstream in(std::string(QTUNE_FIXTURES) + "/model/bundled_expected.json");
  return nlohmann::json::parse(in)["prompt"].get<std::vector<int32_t>>();
}

bool same_bytes(const Tensor& gpu, const Tensor& cpu) {
  Tensor h = gpu.to(Device::CPU);
  return h.nbytes() == cpu.nbytes() && std::memcmp(h.raw(), cpu.raw(), cpu.nbytes()) == 0;
}

// Logits of the last position after ids (F32 [V] on the host).
std::vector<float> last_logits(const LlamaModel& m, const std::vector<int32_t>& ids) {
  Tensor t = Tensor::from_i32(ids, {1, (int64_t)ids.size()});
  KVCache cache = m.make_cache(1, (int64_t)ids.size());
  return m.forward(t, cache, 0, true).to_f32_vector();
}

struct Opt {
  const char* name;
  LoadOptions o;
};

std::vector<Opt> options() {
  LoadOptions nf4;
  nf4.load_in_4bit = true;
  nf4.double_quant = true;
  LoadOptions fp4 = nf4;
  fp4.quant_type = QuantType::FP4;
  fp4.double_quant = false;
  fp4.compute_dtype = DType::BF16;
  LoadOptions int8;
  int8.load_in_8bit = true;
  return {{"nf4+dq", nf4}, {"fp4 bf16", fp4}, {"int8", int8}};
}

}  // namespace

TEST(QuantModelCuda, BundledModelMatchesTheCpuQuantizedModel) {
  REQUIRE_GPU();
  if (!std::filesystem::exists(bundled_dir() + "/config.json")) GTEST_SKIP() << "no bundled model";
  const std::vector<int32_t> prompt = bundled_prompt();
  Tensor ids = Tensor::from_i32(prompt, {1, (int64_t)prompt.size()});
  auto tok = Tokenizer::load(bundled_dir());
  const double dense_err = rel_err(LlamaModel::load(bundled_dir(), Device::CUDA).forward(ids).to_f32_vector(),
                                   LlamaModel::load(bundled_dir(), Device::CPU).forward(ids).to_f32_vector());
  for (const Opt& opt : options()) {
    SCOPED_TRACE(opt.name);
    LlamaModel cpu = LlamaModel::load(bundled_dir(), Device::CPU, opt.o);
    LlamaModel gpu = LlamaModel::load(bundled_dir(), Device::CUDA, opt.o);
    // Storage quantized on the GPU while loading is what bitsandbytes' CUDA kernels write: the host model of
    // their rules on the same file tensor (quantize_4bit with BnbBackend::Cuda; for int8 the CPU path, whose
    // scale differs only in the reciprocal) gives the same absmax / scales and the same codes, but where the
    // GPU's approximate reciprocal moves one, each checked (bf16 weights put many values exactly on FP4's
    // thresholds, so up to ~3 in 10^4 move here).
    const WeightStore store = WeightStore::open(bundled_dir());
    qtune_test::CodeDiff d;
    int layers = 0;
    for (size_t l = 0; l < gpu.layers().size(); l++) {
      const LlamaLayer& b = gpu.layers()[l];
      for (const Linear* lin : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) {
        layers++;
        const Tensor w = store.get(lin->name + ".weight");
        if (opt.o.load_in_4bit) {
          ASSERT_TRUE(lin->q4 && lin->q4->on_cuda()) << lin->name;
          const Quant4Tensor want =
              quantize_4bit(w, opt.o.quant_type, opt.o.blocksize, opt.o.double_quant, BnbBackend::Cuda);
          const Quant4Tensor& got = lin->q4->q;
          if (got.nested) {
            EXPECT_TRUE(same_bytes(got.nested_absmax, want.nested_absmax)) << lin->name;
            EXPECT_EQ(got.offset, want.offset) << lin->name;
          } else {
            EXPECT_TRUE(same_bytes(got.absmax, want.absmax)) << lin->name;
          }
          qtune_test::count_quant4_diffs(w, got, opt.o.quant_type, opt.o.blocksize, d);
        } else {
          ASSERT_TRUE(lin->q8 && lin->q8->on_cuda()) << lin->name;
          const Tensor w16 = w.to_dtype(DType::F16);
          const Int8Rowwise want = int8_vectorwise_quant(w16, 0.0f);
          EXPECT_TRUE(same_bytes(lin->q8->w.scale, want.scale)) << lin->name;
          d.add(qtune_test::int8_code_diffs(w16, want, lin->q8->w.q));
        }
      }
    }
    EXPECT_EQ(d.unexplained, 0);
    EXPECT_LE(d.moved * 100, d.codes);
    const double err = rel_err(gpu.forward(ids).to_f32_vector(), cpu.forward(ids).to_f32_vector());
    std::printf(
        "[ measured ] bundled %s: %d Linear weights, %lld of %lld codes moved by the GPU's reciprocal; "
        "logits cuda vs cpu quantized rel err %.3g (dense bf16 cuda vs f32 cpu: %.3g)\n",
        opt.name, layers, (long long)d.moved, (long long)d.codes, err, dense_err);
    EXPECT_LE(err, 2e-2);

    GenerateOptions g;
    g.max_new_tokens = 32;
    const GenerateResult rc = generate(cpu, prompt, g), rg = generate(gpu, prompt, g);
    size_t same = 0;
    while (same < rc.tokens.size() && same < rg.tokens.size() && rc.tokens[same] == rg.tokens[same]) same++;
    std::printf("[ measured ] bundled %s greedy: %zu of %zu tokens equal\n  cpu : %s\n  cuda: %s\n", opt.name,
                same, rc.tokens.size(), tok->decode(rc.tokens).c_str(), tok->decode(rg.tokens).c_str());
    if (same < rc.tokens.size()) {  // a near tie only
      std::vector<int32_t> prefix = prompt;
      prefix.insert(prefix.end(), rc.tokens.begin(), rc.tokens.begin() + (long)same);
      const std::vector<float> lc = last_logits(cpu, prefix), lg = last_logits(gpu, prefix);
      float maxdiff = 0.0f;
      for (size_t i = 0; i < lc.size(); i++) maxdiff = std::max(maxdiff, std::fabs(lc[i] - lg[i]));
      const float margin = std::fabs(lc[(size_t)rc.tokens[same]] - lc[(size_t)rg.tokens[same]]);
      std::printf("  first difference at step %zu: cpu margin %.4f, max |gpu - cpu| logit %.4f\n", same,
                  margin, maxdiff);
      EXPECT_LE(margin, 2.0f * maxdiff) << "greedy tokens differ at step " << same << " without a near tie";
    }
  }
}

TEST(QuantModelCuda, BitsandbytesFoldersLoadOntoCuda) {
  REQUIRE_GPU();
  for (const std::string name : {"mistral_nf4_dq", "mistral_fp4_bf16", "llama_int8",
                                 "mistral_nf4_bf16_storage_skip", "mistral_fp4_dq_lm_head"}) {
    SCOPED_TRACE(name);
    const std::string dir = std::string(QTUNE_FIXTURES) + "/quant_model/" + name;
    auto f = SafetensorsFile::open(dir + "/logits.safetensors");
    Tensor ids = f->get("ids").clone(), want = f->get("logits").clone();
    LlamaModel m = LlamaModel::load(dir, Device::CUDA);
    EXPECT_TRUE(m.layers()[0].q.quantized());
    EXPECT_EQ(m.lm_head().quantized(), name == "mistral_fp4_dq_lm_head");  // its skip list lacks lm_head
    const std::vector<float> full = m.forward(ids).to_f32_vector();
    const double err = rel_err(full, want.to_f32_vector());
    std::printf("[ measured ] %s on cuda: logits vs transformers+bitsandbytes rel err %.3g\n", name.c_str(),
                err);
    EXPECT_LE(err, 2e-2);
    // The last token again through the KV cache: the one-row paths (the 4-bit GEMV, also for lm_head).
    const int64_t T = ids.size(1), V = m.config().vocab_size;
    KVCache cache = m.make_cache(1, T);
    m.forward(ids.reshape({T}).slice0(0, T - 1).reshape({1, T - 1}), cache, 0);
    const std::vector<float> last =
        m.forward(ids.reshape({T}).slice0(T - 1, 1).reshape({1, 1}), cache, T - 1).to_f32_vector();
    EXPECT_LE(rel_err(last, std::vector<float>(full.end() - V, full.end())), 2e-2);
  }
}

// `qtune quantize --device cuda` (quantize_model_folder on the GPU) writes the bytes that loading with the
// same options on the GPU quantizes: bitsandbytes' GPU bytes, which differ from the CPU folder's.
TEST(QuantModelCuda, QuantizeOnCudaWritesWhatTheGpuLoadQuantizes) {
  REQUIRE_GPU();
  if (!std::filesystem::exists(bundled_dir() + "/config.json")) GTEST_SKIP() << "no bundled model";
  for (const Opt& opt : options()) {
    SCOPED_TRACE(opt.name);
    const std::string dir = temp_dir(std::string("qcuda_") + (opt.o.load_in_4bit ? "q4" : "q8")),
                      cpu_dir = dir + "_cpu";
    quantize_model_folder(bundled_dir(), dir, opt.o, Device::CUDA);
    quantize_model_folder(bundled_dir(), cpu_dir, opt.o, Device::CPU);
    const LlamaModel live = LlamaModel::load(bundled_dir(), Device::CUDA, opt.o);
    const LlamaModel file = LlamaModel::load(dir, Device::CPU),
                     cpu_file = LlamaModel::load(cpu_dir, Device::CPU);
    int equal = 0, differ_from_cpu = 0, n = 0;
    for (size_t l = 0; l < live.layers().size(); l++) {
      const LlamaLayer &a = live.layers()[l], &b = file.layers()[l], &c = cpu_file.layers()[l];
      const Linear* la[7] = {&a.q, &a.k, &a.v, &a.o, &a.gate, &a.up, &a.down};
      const Linear* lb[7] = {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down};
      const Linear* lc[7] = {&c.q, &c.k, &c.v, &c.o, &c.gate, &c.up, &c.down};
      for (int i = 0; i < 7; i++) {
        n++;
        bool eq, cpu_eq;
        if (opt.o.load_in_4bit) {
          const Quant4Tensor &g = la[i]->q4->q, &f = lb[i]->q4->q, &h = lc[i]->q4->q;
          eq = same_bytes(g.packed, f.packed) && same_bytes(g.absmax, f.absmax) && g.offset == f.offset &&
               (!g.nested || same_bytes(g.nested_absmax, f.nested_absmax));
          cpu_eq = same_bytes(f.packed, h.packed) && same_bytes(f.absmax, h.absmax);
        } else {
          eq = same_bytes(la[i]->q8->w.q, lb[i]->q8->w.q) &&
               same_bytes(la[i]->q8->w.scale, lb[i]->q8->w.scale);
          cpu_eq = same_bytes(lb[i]->q8->w.q, lc[i]->q8->w.q);
        }
        EXPECT_TRUE(eq) << la[i]->name;
        equal += eq;
        differ_from_cpu += !cpu_eq;
      }
    }
    std::printf(
        "[ measured ] quantize --device cuda, %s: %d of %d Linear weights equal the GPU load's, %d differ "
        "from the CPU folder's\n",
        opt.name, equal, n, differ_from_cpu);
    EXPECT_GT(differ_from_cpu, 0);  // the two backends part on this model
  }
}
