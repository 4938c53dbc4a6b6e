// The NCCL path with one rank (all this session's machines have one GPU): a real communicator built
// from the store's unique id, all-reduce (sum, avg) through buckets, scalar all-reduce and broadcast
// leave gradients exactly as the no-NCCL path (LocalCommunicator) does. Multi-rank runs: docs/distributed.md.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>

#include "core/allocator.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"

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

}  // namespace
}  // namespace qtune
