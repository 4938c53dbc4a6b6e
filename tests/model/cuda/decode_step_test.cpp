// DecodeStep (batch-1 decode with device-held positions, replayed as a CUDA graph): the graph's logits
// equal the same step launched eagerly bit for bit, at every position; both match LlamaModel::forward's
// decode and transformers within bf16 noise; caches longer than the sequence (empty split-K slices) and
// exactly as long; Linears with biases (Qwen2) and 4-bit weights (NF4 + double quant, FP4: the fused 4-bit
// GEMV, and a row length it does not take) and LLM.int8 weights run in the graph too; models it cannot run
// (batch 2, the CPU) are refused with a typed error. At every step the greedy token the step picks on the
// GPU is the host argmax of its logits, and its pinned copy of the logits equals them.
#include "model/decode_step.h"

#include <gtest/gtest.h>

#include <cstring>

#include "../model_test_util.h"
#include "core/allocator.h"
#include "model/generate.h"
#include "model/llama_model.h"
#include "model/load_options.h"
#include "model/sampling.h"

using namespace qtune;
using namespace qtune_test;

namespace {

#define REQUIRE_GPU()                                                     \
  do {                                                                    \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU in this machine"; \
  } while (0)

// Prefills the first P tokens of ids [1, T] into cache with LlamaModel::forward.
void prefill(const LlamaModel& m, const std::vector<int32_t>& ids, int64_t P, KVCache& cache) {
  std::vector<int32_t> head(ids.begin(), ids.begin() + P);
  m.forward(Tensor::from_i32(head, {1, P}), cache, 0, true);
}

struct StepStats {
  int steps = 0, identical = 0, identical_split = 0;
  double vs_fwd = 0.0;
  std::vector<float> logits;  // the graph's, [steps, V]
};

// Decodes ids[P..T) after a prefill of P tokens with a graph step, an eager one, an eager one with split
// add/norm launches and LlamaModel::forward, each on its own cache of max_seq positions.
StepStats run_steps(const LlamaModel& m, const std::vector<int32_t>& ids, int64_t P, int64_t max_seq,
                    const std::string& what) {
  const int64_t T = (int64_t)ids.size(), V = m.config().vocab_size;
  KVCache c_eager = m.make_cache(1, max_seq), c_graph = m.make_cache(1, max_seq),
          c_split = m.make_cache(1, max_seq), c_fwd = m.make_cache(1, max_seq);
  EXPECT_TRUE(DecodeStep::supported(m, c_graph)) << what;
  for (KVCache* c : {&c_eager, &c_graph, &c_fwd, &c_split}) prefill(m, ids, P, *c);
  // split: residual add and RMSNorm as two launches instead of add_rmsnorm, or (4-bit) instead of inside the
  // GEMV that reads the norm: equal bit for bit
  DecodeStep eager(m, c_eager, false), graph(m, c_graph, true), split(m, c_split, false, false);
  StepStats st;
  std::vector<float> fwd;
  for (int64_t pos = P; pos < T; pos++) {
    std::vector<float> e = eager.run(ids[pos], pos).to_f32_vector();
    std::vector<float> g = graph.run(ids[pos], pos).to_f32_vector();
    std::vector<float> sp = split.run(ids[pos], pos).to_f32_vector();
    // What generate() reads of a step: the greedy token picked on the GPU, or the logits' pinned copy.
    EXPECT_EQ(graph.greedy_token(), argmax(g.data(), (int64_t)g.size())) << what << " at " << pos;
    EXPECT_EQ(std::memcmp(eager.host_logits(), e.data(), e.size() * sizeof(float)), 0)
        << what << " at " << pos;
    EXPECT_EQ(e.size(), (size_t)V);
    EXPECT_EQ(g.size(), (size_t)V);
    st.steps++;
    st.identical += e.size() == g.size() && std::memcmp(e.data(), g.data(), e.size() * sizeof(float)) == 0;
    st.identical_split +=
        e.size() == sp.size() && std::memcmp(e.data(), sp.data(), e.size() * sizeof(float)) == 0;
    if (pos > P) EXPECT_TRUE(graph.graph_active()) << what << ": " << graph.graph_error();
    EXPECT_FALSE(eager.graph_active());
    std::vector<float> f = m.forward(Tensor::from_i32({ids[pos]}, {1, 1}), c_fwd, pos, true).to_f32_vector();
    st.logits.insert(st.logits.end(), g.begin(), g.end());
    fwd.insert(fwd.end(), f.begin(), f.end());
  }
  st.vs_fwd = rel_err(st.logits, fwd);
  EXPECT_EQ(st.identical, st.steps) << what;
  EXPECT_EQ(st.identical_split, st.steps) << what;
  EXPECT_LE(st.vs_fwd, 2e-2) << what;
  return st;
}

std::vector<int32_t> fixture_ids(const std::string& name) {
  Tensor ids_t = expected_tensor(name, "ids");  // [1, T]
  return std::vector<int32_t>(ids_t.data<int32_t>(), ids_t.data<int32_t>() + ids_t.numel());
}

}  // namespace

TEST(CudaDecodeStep, GraphEqualsEagerAndMatchesForward) {
  REQUIRE_GPU();
  for (std::string name : {"llama", "mistral", "qwen2"}) {  // qwen2: q/k/v biases
    LlamaModel m = LlamaModel::load(fixture(name), Device::CUDA);
    std::vector<int32_t> ids = fixture_ids(name);
    std::vector<float> hf = expected_tensor(name, "logits").to_f32_vector();  // [1, T, V]
    const int64_t T = (int64_t)ids.size(), V = m.config().vocab_size, P = 3;
    ASSERT_GT(T, P + 2);
    for (int64_t max_seq : {T, (int64_t)1024}) {  // one split-K slice; many, the trailing ones empty
      StepStats st = run_steps(m, ids, P, max_seq, name);
      std::vector<float> want(hf.begin() + P * V, hf.begin() + T * V);
      const double vs_hf = rel_err(st.logits, want);
      std::printf(
          "[ measured ] cuda %s max_seq %lld: graph == eager logits at %d of %d steps (fused == split "
          "add/norm at %d); vs forward %.3g, vs transformers %.3g\n",
          name.c_str(), (long long)max_seq, st.identical, st.steps, st.identical_split, st.vs_fwd, vs_hf);
      EXPECT_LE(vs_hf, 2e-2) << name;
    }
  }
}

// 4-bit weights quantized at load: every decoder Linear is the fused 4-bit GEMV (qwen2's down projection,
// rows of 176, takes the dequantize + GEMM path the GEMV leaves to it), replayed in the graph.
TEST(CudaDecodeStep, FourBitGraphEqualsEagerAndMatchesForward) {
  REQUIRE_GPU();
  LoadOptions nf4;
  nf4.load_in_4bit = true;
  nf4.double_quant = true;
  nf4.compute_dtype = DType::BF16;
  LoadOptions fp4;
  fp4.load_in_4bit = true;
  fp4.quant_type = QuantType::FP4;
  for (std::string name : {"llama", "qwen2"})
    for (const LoadOptions* o : {&nf4, &fp4}) {
      const std::string what = name + (o == &nf4 ? " nf4+dq" : " fp4");
      LlamaModel m = LlamaModel::load(fixture(name), Device::CUDA, *o);
      ASSERT_TRUE(m.layers()[0].q.q4) << what;
      std::vector<int32_t> ids = fixture_ids(name);
      StepStats st = run_steps(m, ids, 3, 64, what);
      std::printf("[ measured ] cuda %s: graph == eager logits at %d of %d steps; vs forward %.3g\n",
                  what.c_str(), st.identical, st.steps, st.vs_fwd);
    }
}

// LLM.int8 weights quantized at load (threshold 6: the fixtures' activations give outlier columns): the int8
// GEMV with its outlier handling, its buffers kept for the graph.
TEST(CudaDecodeStep, Int8GraphEqualsEagerAndMatchesForward) {
  REQUIRE_GPU();
  LoadOptions int8;
  int8.load_in_8bit = true;
  for (std::string name : {"llama", "qwen2"}) {
    LlamaModel m = LlamaModel::load(fixture(name), Device::CUDA, int8);
    ASSERT_TRUE(m.layers()[0].q.q8) << name;
    std::vector<int32_t> ids = fixture_ids(name);
    StepStats st = run_steps(m, ids, 3, 64, name + " int8");
    std::printf("[ measured ] cuda %s int8: graph == eager logits at %d of %d steps; vs forward %.3g\n",
                name.c_str(), st.identical, st.steps, st.vs_fwd);
  }
}

TEST(CudaDecodeStep, RefusesWhatItCannotRun) {
  REQUIRE_GPU();
  LlamaModel m = LlamaModel::load(fixture("llama"), Device::CUDA);
  KVCache batch2 = m.make_cache(2, 8);
  EXPECT_FALSE(DecodeStep::supported(m, batch2));
  LlamaModel cpu = LlamaModel::load(fixture("llama"), Device::CPU);
  KVCache ccpu = cpu.make_cache(1, 8);
  EXPECT_FALSE(DecodeStep::supported(cpu, ccpu));
  expect_error([&] { DecodeStep s(cpu, ccpu); }, ErrorKind::Unsupported, {"DecodeStep", "CUDA"});
  KVCache c = m.make_cache(1, 8);
  DecodeStep s(m, c);
  expect_error([&] { s.run(384, 0); }, ErrorKind::Shape, {"token id 384", "vocabulary"});
  expect_error([&] { s.run(1, 8); }, ErrorKind::Shape, {"position 8", "8 positions"});
}

// generate()'s greedy tokens, picked on the GPU through the step and through LlamaModel::forward
// (QTUNE_DECODE_STEP=0: the path adapters and CPU offload take), equal a loop that reads every token's
// logits to the host and takes qtune::argmax.
TEST(CudaDecodeStep, GreedyGenerationPicksTheHostArgmaxOnBothPaths) {
  REQUIRE_GPU();
  for (std::string name : {"llama", "qwen2"}) {
    LlamaModel m = LlamaModel::load(fixture(name), Device::CUDA);
    std::vector<int32_t> ids = fixture_ids(name);
    std::vector<int32_t> prompt(ids.begin(), ids.begin() + 5);
    const int n = 24;
    GenerateOptions opt;
    opt.max_new_tokens = n;
    const GenerateResult step = generate(m, prompt, opt);
    ASSERT_EQ(setenv("QTUNE_DECODE_STEP", "0", 1), 0);
    const GenerateResult fwd = generate(m, prompt, opt);
    unsetenv("QTUNE_DECODE_STEP");
    EXPECT_EQ(step.decode_path, "graph") << name;
    EXPECT_EQ(fwd.decode_path, "forward") << name;
    KVCache c = m.make_cache(1, (int64_t)prompt.size() + n);
    std::vector<float> row =
        m.forward(Tensor::from_i32(prompt, {1, (int64_t)prompt.size()}), c, 0, true).to_f32_vector();
    std::vector<int32_t> want;
    for (int64_t pos = (int64_t)prompt.size(); (int)want.size() < n; pos++) {
      want.push_back(argmax(row.data(), (int64_t)row.size()));
      if ((int)want.size() == n) break;
      row = m.forward(Tensor::from_i32({want.back()}, {1, 1}), c, pos, true).to_f32_vector();
    }
    EXPECT_EQ(step.tokens, want) << name;
    EXPECT_EQ(fwd.tokens, want) << name;
  }
}
