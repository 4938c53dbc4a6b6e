// FsdpShards on 2 forked CPU ranks (StoreCommunicator): the tiny model's decoder layers sharded, dense F32
// and NF4 with double quantization. A training pass through the hooks (gradient checkpointing, so the
// backward recomputes every block) gives the same loss and gradient, bit for bit, as the whole model; each
// rank keeps about half the base bytes plus two layer-sized gather buffers; the gathers issued are the
// ones the prefetch order predicts; unshard() makes the model whole again. Plus the gradient bucketing
// of OverlappedGradReducer and the owner assignment and broadcast of the sharded optimizer.
#include "dist/fsdp.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "dist/grad_overlap.h"
#include "dist/sharded_optimizer.h"
#include "dist_test_util.h"
#include "train/causal_lm.h"

namespace qtune {
namespace {

const std::string kModel = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";

std::unique_ptr<DistContext> rank_context(int r, int world, int port) {
  setenv("OMP_NUM_THREADS", "1", 1);
  DistConfig c;
  c.world_size = world;
  c.rank = c.local_rank = r;
  c.master_port = port;
  return init_distributed(c, Device::CPU, {60, 0.05, 20});
}

// Deterministic ids [2, 24] and next-token labels.
void batch(Tensor& ids, Tensor& labels, int64_t vocab) {
  std::vector<int32_t> v(48), l(48);
  for (int i = 0; i < 48; ++i) v[i] = (int32_t)((i * 7919 + 13) % vocab);
  for (int i = 0; i < 48; ++i) l[i] = i % 24 == 23 ? -100 : v[i + 1];
  ids = Tensor::from_i32(v, {2, 24});
  labels = Tensor::from_i32(l, {2, 24});
}

int check_sharded_pass(Communicator& comm, bool quant) {
  LoadOptions lo;
  lo.load_in_4bit = quant;
  lo.double_quant = quant;
  LlamaModel whole = LlamaModel::load(kModel, Device::CPU, lo),
             sharded = LlamaModel::load(kModel, Device::CPU, lo);
  const ModelConfig& cfg = whole.config();
  const std::string norm0 = "model.layers.0.input_layernorm.weight";  // trainable: backward runs every block
  TrainableParams pw, ps;
  pw.add(norm0, whole.layers()[0].input_norm);
  ps.add(norm0, sharded.layers()[0].input_norm);
  FsdpShards f(sharded, comm, &ps);
  const int64_t L = cfg.num_hidden_layers, C = cfg.hidden_size, F = cfg.intermediate_size;
  const int64_t attn = (int64_t)cfg.num_attention_heads * cfg.head_dim,
                kv = (int64_t)cfg.num_key_value_heads * cfg.head_dim;
  const int64_t weights = L * (2 * attn * C + 2 * kv * C + 3 * F * C);  // elements of the 7 Linears
  if (!quant && f.full_bytes() != weights * 4) {
    std::fprintf(stderr, "full bytes %ld, expected %ld\n", (long)f.full_bytes(), (long)weights * 4);
    return 10;
  }
  if (quant && !(f.full_bytes() > weights / 2 && f.full_bytes() < weights * 6 / 10)) return 11;  // ~4.2 bits
  // 1/world per rank, up to 256-byte alignment of the pieces and the padding of each layer.
  const int64_t slack = L * 8 * 256 * 2;
  if (std::llabs(comm.world_size() * f.shard_bytes() - f.full_bytes()) > slack) {
    std::fprintf(stderr, "shard %ld of full %ld\n", (long)f.shard_bytes(), (long)f.full_bytes());
    return 12;
  }
  if (std::llabs(f.buffer_bytes() - 2 * f.full_bytes() / L) > slack) return 13;
  Tensor ids, labels;
  batch(ids, labels, cfg.vocab_size);
  StepOptions so;
  so.gradient_checkpointing = true;
  const LossSum a = causal_lm_forward_backward(whole, ids, labels, &pw, so);
  so.block_hooks = &f;
  const LossSum b = causal_lm_forward_backward(sharded, ids, labels, &ps, so);
  if (a.loss != b.loss || a.count != b.count) {
    std::fprintf(stderr, "loss %.9g vs sharded %.9g\n", a.loss, b.loss);
    return 14;
  }
  if (pw.at(norm0).grad.to_f32_vector() != ps.at(norm0).grad.to_f32_vector()) return 15;
  // Forward 0..L-1 (L gathers); the backward finds L-1 and L-2 still in the slots: L-2 more.
  if (f.gathers() != 2 * L - 2) {
    std::fprintf(stderr, "%ld gathers\n", (long)f.gathers());
    return 16;
  }
  // A forward-only pass: the backward left blocks 0 and 1 in the slots, the other L-2 are gathered again.
  const LossSum c = causal_lm_forward_backward(sharded, ids, labels, nullptr, so);
  if (f.gathers() != 3 * L - 4 || c.loss != causal_lm_forward_backward(whole, ids, labels, nullptr, {}).loss)
    return 17;
  f.unshard();
  if (causal_lm_forward_backward(sharded, ids, labels, nullptr, so).loss != c.loss) return 18;
  return 0;
}

TEST(FsdpShards, TwoRanksTrainLikeTheWholeModelOnHalfTheBytes) {
  const int port = test::fresh_port();
  auto codes = test::run_ranks(2, [&](int r) {
    auto ctx = rank_context(r, 2, port);
    for (bool quant : {false, true}) {
      const int rc = check_sharded_pass(*ctx->comm, quant);
      if (rc) {
        std::fprintf(stderr, "rank %d quant %d: code %d\n", r, quant, rc);
        return rc;
      }
    }
    ctx->finish();
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

TEST(FsdpShards, OneRankLocalCommunicator) {
  auto codes = test::run_ranks(1, [&](int) {
    setenv("OMP_NUM_THREADS", "1", 1);
    LocalCommunicator local(Device::CPU);
    return check_sharded_pass(local, true);
  });
  EXPECT_EQ(codes, std::vector<int>{0});
}

TEST(GradOverlap, LayerOfParam) {
  EXPECT_EQ(layer_of_param("base_model.model.model.layers.12.self_attn.q_proj.lora_A.weight"), 12);
  EXPECT_EQ(layer_of_param("model.layers.3.mlp.down_proj.weight"), 3);
  EXPECT_EQ(layer_of_param("model.embed_tokens.weight"), -1);
  EXPECT_EQ(layer_of_param("model.xlayers.3.w"), -1);
  EXPECT_EQ(layer_of_param("prompt_encoder.default.embedding.weight"), -1);
}

// 3 ranks: gradients of 2 blocks and one outside any block, reduced from the hooks in 64-byte buckets
// (one tensor alone, in place), equal the direct sums; the sharded optimizer's owners, balanced by size,
// broadcast their values to everyone.
TEST(GradOverlap, BucketsFromTheHooksEqualTheSums) {
  const int port = test::fresh_port();
  auto codes = test::run_ranks(3, [&](int r) {
    auto ctx = rank_context(r, 3, port);
    Communicator& comm = *ctx->comm;
    const std::vector<std::pair<std::string, Shape>> specs = {
        {"model.layers.0.a", {3, 2}}, {"model.layers.0.b", {40}},    {"model.layers.1.a", {5}},
        {"model.layers.1.b", {2, 2}}, {"model.embed_tokens.w", {7}}, {"model.layers.1.c", {3}}};
    std::vector<ParamRef> refs;
    auto value = [](int rank, size_t k, int64_t i) {
      return (float)(rank + 1) * 0.5f + (float)k + 0.01f * i;
    };
    for (size_t k = 0; k < specs.size(); ++k) {
      std::vector<float> g(shape_numel(specs[k].second)), p(g.size());
      for (size_t i = 0; i < g.size(); ++i) g[i] = value(r, k, (int64_t)i), p[i] = r == 0 ? 0.0f : -1.0f;
      refs.push_back(
          {specs[k].first, Tensor::from_f32(p, specs[k].second), Tensor::from_f32(g, specs[k].second)});
    }
    OverlappedGradReducer red(comm, refs, 2, 64);
    red.arm(true);
    red.after_block(1, true);
    red.after_block(1, false);         // forward: ignored
    if (red.started() != 1) return 1;  // block 1: 12 floats in one bucket
    red.after_block(0, true);
    if (red.started() != 3) return 2;  // block 0: [3, 2] bucketed, [40] alone
    const int calls = red.finish();
    if (calls != 4) return 3;
    for (size_t k = 0; k < refs.size(); ++k)
      for (int64_t i = 0; i < refs[k].grad.numel(); ++i) {
        const float want = value(0, k, i) + value(1, k, i) + value(2, k, i);
        if (std::fabs(refs[k].grad.data<float>()[i] - want) > 1e-5f) return 4;
      }
    std::vector<int> owner = assign_owners(refs, 3);
    if (owner[1] != 0) return 5;  // the largest tensor goes first, to rank 0
    std::vector<int64_t> load(3, 0);
    for (size_t k = 0; k < refs.size(); ++k) load[owner[k]] += refs[k].param.numel();
    if (load[1] == 0 || load[2] == 0) return 6;
    for (size_t k = 0; k < refs.size(); ++k)  // owners write their rank into their params
      if (owner[k] == r)
        for (int64_t i = 0; i < refs[k].param.numel(); ++i) refs[k].param.data<float>()[i] = (float)r + 0.25f;
    broadcast_from_owners(comm, refs, owner);
    for (size_t k = 0; k < refs.size(); ++k)
      for (int64_t i = 0; i < refs[k].param.numel(); ++i)
        if (refs[k].param.data<float>()[i] != (float)owner[k] + 0.25f) return 7;
    ctx->finish();
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0, 0}));
}

}  // namespace
}  // namespace qtune
