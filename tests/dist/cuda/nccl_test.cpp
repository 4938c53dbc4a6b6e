// The NCCL path with one rank (all this session's machines have one GPU): a real communicator built
// from the store's unique id, all-reduce (sum, avg) through buckets, scalar all-reduce and broadcast
// leave gradients exactly as the no-NCCL path (LocalCommunicator) does; all_gather and the asynchronous
// side-stream forms; FSDP shards of the NF4 tiny model gathered through NCCL train like the whole model.
// Multi-rank runs: docs/distributed.md.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>

#include "core/allocator.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "dist/fsdp.h"
#include "dist/grad_overlap.h"
#include "train/causal_lm.h"

namespace qtune {
namespace {

std::vector<ParamRef> random_grads(uint64_t seed, Device d) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<ParamRef> refs;
  const std::vector<Shape> shapes = {{64, 8}, {8, 64}, {3}, {1000}, {128, 128}, {7, 5}};
  for (size_t k = 0; k < shapes.size(); ++k) {
    std::vector<float> v(shape_numel(shapes[k]));
    for (float& x : v) x = nd(rng);
    refs.push_back({"p" + std::to_string(k), Tensor(), Tensor::from_f32(v, shapes[k]).to(d)});
  }
  return refs;
}

TEST(NcclCommunicator, OneRankEqualsNoNccl) {
  if (!cuda_available()) GTEST_SKIP() << "no GPU";
  ASSERT_TRUE(nccl_available());
  TcpStore store({"127.0.0.1", 29000 + (int)(getpid() % 20000), 0, 1, 60});
  auto comm = make_nccl_communicator(store, nullptr, 0, 60);
  ASSERT_STREQ(std::getenv("NCCL_NVLS_ENABLE"), "0");
  EXPECT_EQ(comm->world_size(), 1);
  LocalCommunicator local(Device::CUDA);
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg}) {
    for (int64_t bucket : {int64_t(256), int64_t(4096), kDefaultBucketBytes}) {
      auto a = random_grads(7, Device::CUDA), b = random_grads(7, Device::CUDA);
      const int calls = allreduce_grads(*comm, a, op, bucket);
      allreduce_grads(local, b, op, bucket);
      EXPECT_GE(calls, 1);
      for (size_t k = 0; k < a.size(); ++k) {
        const auto x = a[k].grad.to_f32_vector(), y = b[k].grad.to_f32_vector();
        ASSERT_EQ(x, y) << a[k].name << " bucket " << bucket;
      }
    }
  }
  EXPECT_EQ(comm->all_reduce_scalar(12345.0, ReduceOp::Sum), 12345.0);
  Tensor t = Tensor::from_f32({1.5f, -2.0f}, {2}).to(Device::CUDA);
  comm->broadcast(t, 0);
  EXPECT_EQ(t.to_f32_vector(), (std::vector<float>{1.5f, -2.0f}));
  comm->barrier("end");
}

// all_gather and the asynchronous forms on the side stream: with one rank the gather is a copy and the
// all-reduce the identity, queued behind the kernels before them (a zero fill) and waited for by ticket.
TEST(NcclCommunicator, OneRankAllGatherAndAsync) {
  if (!cuda_available()) GTEST_SKIP() << "no GPU";
  TcpStore store({"127.0.0.1", 29000 + (int)((getpid() + 7) % 20000), 0, 1, 60});
  auto comm = make_nccl_communicator(store, nullptr, 0, 60);
  std::vector<float> v(3000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.5f * (float)i - 3.0f;
  Tensor shard = Tensor::from_f32(v, {3000}).to(Device::CUDA);
  Tensor full = Tensor::empty({3000}, DType::F32, Device::CUDA);
  comm->all_gather(shard, full);
  EXPECT_EQ(full.to_f32_vector(), v);
  Tensor g = Tensor::from_f32(v, {3000}).to(Device::CUDA);
  g.set_zero();  // queued on the legacy stream: the side stream's all-reduce must see it
  Tensor full2 = Tensor::empty({3000}, DType::F32, Device::CUDA);
  const int64_t t1 = comm->start_all_gather(shard, full2);
  const int64_t t2 = comm->start_all_reduce(g, ReduceOp::Sum);
  EXPECT_GT(t2, t1);
  comm->wait(t2);
  EXPECT_EQ(full2.to_f32_vector(), v);
  EXPECT_EQ(g.to_f32_vector(), std::vector<float>(3000, 0.0f));
  Tensor bad = Tensor::empty({2999}, DType::F32, Device::CUDA);
  EXPECT_THROW(comm->all_gather(shard, bad), Error);
  comm->barrier("end2");
}

// FSDP with one NCCL rank on the GPU: the tiny model in NF4 + double quant (quantized on the GPU), its
// layers moved into shards and gathered through the side stream, trains (gradient checkpointing, LoRA-free
// trainable norm) with the loss and gradient of the whole model; the overlapped gradient reducer leaves the
// gradient as it is.
TEST(NcclCommunicator, OneRankFsdpEqualsWholeModel) {
  if (!cuda_available()) GTEST_SKIP() << "no GPU";
  TcpStore store({"127.0.0.1", 29000 + (int)((getpid() + 13) % 20000), 0, 1, 60});
  auto comm = make_nccl_communicator(store, nullptr, 0, 60);
  const std::string dir = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";
  LoadOptions lo;
  lo.load_in_4bit = true;
  lo.double_quant = true;
  lo.compute_dtype = DType::BF16;
  LlamaModel whole = LlamaModel::load(dir, Device::CUDA, lo),
             sharded = LlamaModel::load(dir, Device::CUDA, lo);
  const std::string norm0 = "model.layers.0.input_layernorm.weight";
  TrainableParams pw, ps;
  Tensor nw = whole.layers()[0].input_norm.to(Device::CPU).to_dtype(DType::F32).to(Device::CUDA);
  pw.add(norm0, nw);
  ps.add(norm0, nw);
  FsdpShards f(sharded, *comm, &ps);
  EXPECT_GT(f.full_bytes(), 0);
  EXPECT_EQ(f.shard_bytes() >= f.full_bytes(), true);  // one rank keeps everything
  const int64_t V = whole.config().vocab_size;
  std::vector<int32_t> ids(64), labels(64);
  for (int i = 0; i < 64; ++i) ids[i] = (int32_t)((i * 7919 + 13) % V);
  for (int i = 0; i < 64; ++i) labels[i] = i % 32 == 31 ? -100 : ids[i + 1];
  Tensor ti = Tensor::from_i32(ids, {2, 32}), tl = Tensor::from_i32(labels, {2, 32});
  StepOptions so;
  so.gradient_checkpointing = true;
  const LossSum a = causal_lm_forward_backward(whole, ti, tl, &pw, so);
  OverlappedGradReducer red(*comm, {{norm0, ps.at(norm0).param, ps.at(norm0).grad}}, 8);
  BlockHookChain chain;
  chain.hooks = {&f, &red};
  red.arm(true);
  so.block_hooks = &chain;
  const LossSum b = causal_lm_forward_backward(sharded, ti, tl, &ps, so);
  EXPECT_EQ(red.started(), 1);
  red.finish();
  EXPECT_NEAR(b.loss, a.loss, 1e-6 * std::fabs(a.loss));
  EXPECT_EQ(f.gathers(), 14);
  const auto gw = pw.at(norm0).grad.to_f32_vector(), gs = ps.at(norm0).grad.to_f32_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < gw.size(); ++i) num += (gw[i] - gs[i]) * (gw[i] - gs[i]), den += gw[i] * gw[i];
  EXPECT_LE(std::sqrt(num / den), 1e-6);
  f.unshard();
  EXPECT_NEAR(causal_lm_forward_backward(sharded, ti, tl, nullptr, {}).loss,
              causal_lm_forward_backward(whole, ti, tl, nullptr, {}).loss, 1e-6 * std::fabs(a.loss));
}

}  // namespace
}  // namespace qtune
