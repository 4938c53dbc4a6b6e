// DecodeStep (batch-1 decode with device-held positions, replayed as a CUDA graph): the graph's logits
// equal the same step launched eagerly bit for bit, at every position; both match LlamaModel::forward's
// decode and transformers within bf16 noise; caches longer than the sequence (empty split-K slices) and
// exactly as long; models it cannot run (biases) are refused with a typed error.
#include "model/decode_step.h"

#include <gtest/gtest.h>

#include <cstring>

#include "../model_test_util.h"
#include "core/allocator.h"
#include "model/llama_model.h"

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

}  // namespace

TEST(CudaDecodeStep, GraphEqualsEagerAndMatchesForward) {
  REQUIRE_GPU();
  for (std::string name : {"llama", "mistral"}) {
    LlamaModel m = LlamaModel::load(fixture(name), Device::CUDA);
    Tensor ids_t = expected_tensor(name, "ids");  // [1, T]
    std::vector<int32_t> ids(ids_t.data<int32_t>(), ids_t.data<int32_t>() + ids_t.numel());
    std::vector<float> hf = expected_tensor(name, "logits").to_f32_vector();  // [1, T, V]
    const int64_t T = (int64_t)ids.size(), V = m.config().vocab_size, P = 3;
    ASSERT_GT(T, P + 2);
    for (int64_t max_seq : {T, (int64_t)1024}) {  // one split-K slice; many, the trailing ones empty
      KVCache c_eager = m.make_cache(1, max_seq), c_graph = m.make_cache(1, max_seq),
              c_split = m.make_cache(1, max_seq), c_fwd = m.make_cache(1, max_seq);
      ASSERT_TRUE(DecodeStep::supported(m, c_graph));
      prefill(m, ids, P, c_eager);
      prefill(m, ids, P, c_graph);
      prefill(m, ids, P, c_fwd);
      prefill(m, ids, P, c_split);
      // split: residual add and RMSNorm as two launches instead of add_rmsnorm (equal bit for bit)
      DecodeStep eager(m, c_eager, false), graph(m, c_graph, true), split(m, c_split, false, false);
      std::vector<float> got, fwd, want;
      int identical = 0, identical_split = 0;
      for (int64_t pos = P; pos < T; pos++) {
        std::vector<float> e = eager.run(ids[pos], pos).to_f32_vector();
        std::vector<float> g = graph.run(ids[pos], pos).to_f32_vector();
        ASSERT_EQ(e.size(), (size_t)V);
        ASSERT_EQ(g.size(), (size_t)V);
        std::vector<float> sp = split.run(ids[pos], pos).to_f32_vector();
        identical += std::memcmp(e.data(), g.data(), V * sizeof(float)) == 0;
        identical_split += std::memcmp(e.data(), sp.data(), V * sizeof(float)) == 0;
        if (pos > P) EXPECT_TRUE(graph.graph_active()) << name << ": " << graph.graph_error();
        EXPECT_FALSE(eager.graph_active());
        std::vector<float> f =
            m.forward(Tensor::from_i32({ids[pos]}, {1, 1}), c_fwd, pos, true).to_f32_vector();
        got.insert(got.end(), g.begin(), g.end());
        fwd.insert(fwd.end(), f.begin(), f.end());
        want.insert(want.end(), hf.begin() + pos * V, hf.begin() + (pos + 1) * V);
      }
      double vs_fwd = rel_err(got, fwd), vs_hf = rel_err(got, want);
      std::printf(
          "[ measured ] cuda %s max_seq %lld: graph == eager logits at %d of %lld steps (fused == split "
          "add/norm at %d); vs forward %.3g, vs transformers %.3g\n",
          name.c_str(), (long long)max_seq, identical, (long long)(T - P), identical_split, vs_fwd, vs_hf);
      EXPECT_EQ(identical, T - P) << name;
      EXPECT_EQ(identical_split, T - P) << name;
      EXPECT_LE(vs_fwd, 2e-2) << name;
      EXPECT_LE(vs_hf, 2e-2) << name;
    }
  }
}

TEST(CudaDecodeStep, RefusesWhatItCannotRun) {
  REQUIRE_GPU();
  LlamaModel q = LlamaModel::load(fixture("qwen2"), Device::CUDA);  // q/k/v biases
  KVCache cq = q.make_cache(1, 8);
  EXPECT_FALSE(DecodeStep::supported(q, cq));
  expect_error([&] { DecodeStep s(q, cq); }, ErrorKind::Unsupported, {"DecodeStep", "dense"});
  LlamaModel m = LlamaModel::load(fixture("llama"), Device::CUDA);
  KVCache batch2 = m.make_cache(2, 8);
  EXPECT_FALSE(DecodeStep::supported(m, batch2));
  LlamaModel cpu = LlamaModel::load(fixture("llama"), Device::CPU);
  KVCache ccpu = cpu.make_cache(1, 8);
  EXPECT_FALSE(DecodeStep::supported(cpu, ccpu));
  KVCache c = m.make_cache(1, 8);
  DecodeStep s(m, c);
  expect_error([&] { s.run(384, 0); }, ErrorKind::Shape, {"token id 384", "vocabulary"});
  expect_error([&] { s.run(1, 8); }, ErrorKind::Shape, {"position 8", "8 positions"});
}
