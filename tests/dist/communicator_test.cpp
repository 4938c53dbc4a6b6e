// StoreCommunicator across forked ranks: all-reduce sum/avg, scalars, broadcast, all-gather (also through the
// asynchronous start/wait forms), and allreduce_grads in small buckets equal the sums computed directly; a
// rank that dies mid-collective ends the others' wait with a message naming it.
#include "dist/communicator.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>

#include "core/error.h"
#include "dist/data_parallel.h"
#include "dist_test_util.h"

namespace qtune {
namespace {

// Deterministic per-rank values: v(rank, i).
float val(int r, int64_t i) {
  return (float)(std::sin(0.37 * (double)i + r) + 0.25 * r);
}

TEST(StoreCommunicator, CollectivesAndBuckets) {
  const int port = test::fresh_port();
  const int n = 3;
  auto codes = test::run_ranks(n, [&](int r) {
    DistConfig c;
    c.world_size = n;
    c.rank = c.local_rank = r;
    c.master_port = port;
    auto ctx = init_distributed(c, Device::CPU, {10, 0.05, 5});
    Communicator& comm = *ctx->comm;
    std::vector<float> v(37);
    for (int i = 0; i < 37; ++i) v[i] = val(r, i);
    Tensor t = Tensor::from_f32(v, {37});
    comm.all_reduce(t, ReduceOp::Avg);
    for (int i = 0; i < 37; ++i) {
      const float want = (val(0, i) + val(1, i) + val(2, i)) / 3;
      if (std::fabs(t.data<float>()[i] - want) > 1e-6f) return 1;
    }
    if (comm.all_reduce_scalar(r + 1, ReduceOp::Sum) != 6.0) return 2;
    if (ctx->store->check("ar/0/" + std::to_string(r))) return 6;  // a round later, the old post is gone
    Tensor b = Tensor::from_f32({(float)r, (float)r}, {2});
    comm.broadcast(b, 2);
    if (b.data<float>()[0] != 2.0f) return 3;
    // Gradients of several shapes through 64-byte buckets (16 floats): some share one, one is alone.
    std::vector<ParamRef> refs;
    const std::vector<Shape> shapes = {{3, 2}, {5}, {4, 4}, {40}, {2}};
    int64_t base = 0;
    for (size_t k = 0; k < shapes.size(); ++k) {
      std::vector<float> g(shape_numel(shapes[k]));
      for (size_t i = 0; i < g.size(); ++i) g[i] = val(r, base + (int64_t)i);
      base += (int64_t)g.size();
      refs.push_back({"p" + std::to_string(k), Tensor(), Tensor::from_f32(g, shapes[k])});
    }
    const int calls = allreduce_grads(comm, refs, ReduceOp::Sum, 64);
    if (calls < 3) return 4;
    base = 0;
    for (const ParamRef& p : refs) {
      for (int64_t i = 0; i < p.grad.numel(); ++i) {
        const float want = val(0, base + i) + val(1, base + i) + val(2, base + i);
        if (std::fabs(p.grad.data<float>()[i] - want) > 1e-6f) return 5;
      }
      base += p.grad.numel();
    }
    ctx->finish();
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0, 0}));
}

TEST(StoreCommunicator, AllGatherAndAsyncForms) {
  const int port = test::fresh_port();
  const int n = 3;
  auto codes = test::run_ranks(n, [&](int r) {
    DistConfig c;
    c.world_size = n;
    c.rank = c.local_rank = r;
    c.master_port = port;
    auto ctx = init_distributed(c, Device::CPU, {10, 0.05, 5});
    Communicator& comm = *ctx->comm;
    std::vector<float> v(5);
    for (int i = 0; i < 5; ++i) v[i] = val(r, i);
    Tensor shard = Tensor::from_f32(v, {5});
    Tensor full = Tensor::zeros({15}, DType::F32);
    comm.all_gather(shard, full);
    for (int q = 0; q < n; ++q)
      for (int i = 0; i < 5; ++i)
        if (full.data<float>()[q * 5 + i] != val(q, i)) return 1;
    // Bytes of any dtype, through the asynchronous form.
    Tensor b = Tensor::zeros({4}, DType::U8), all = Tensor::zeros({12}, DType::U8);
    for (int i = 0; i < 4; ++i) b.data<uint8_t>()[i] = (uint8_t)(10 * r + i);
    const int64_t t1 = comm.start_all_gather(b, all);
    Tensor s = Tensor::from_f32({(float)r, 1.0f}, {2});
    const int64_t t2 = comm.start_all_reduce(s, ReduceOp::Sum);
    if (!(t2 > t1 && t1 > 0)) return 2;
    comm.wait(t2);
    for (int q = 0; q < n; ++q)
      for (int i = 0; i < 4; ++i)
        if (all.data<uint8_t>()[q * 4 + i] != 10 * q + i) return 3;
    if (s.data<float>()[0] != 3.0f || s.data<float>()[1] != 3.0f) return 4;
    Tensor wrong = Tensor::zeros({14}, DType::F32);
    try {
      comm.all_gather(shard, wrong);
      return 5;
    } catch (const Error& e) {
      if (std::string(e.what()).find("all_gather") == std::string::npos) return 6;
    }
    ctx->finish();
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0, 0}));
}

TEST(LocalCommunicator, AllGatherCopies) {
  LocalCommunicator local(Device::CPU);
  Tensor a = Tensor::from_f32({1, 2, 3}, {3}), b = Tensor::zeros({3}, DType::F32);
  local.wait(local.start_all_gather(a, b));
  EXPECT_EQ(b.to_f32_vector(), (std::vector<float>{1, 2, 3}));
}

TEST(StoreCommunicator, DeadRankEndsTheCollective) {
  const int port = test::fresh_port();
  auto codes = test::run_ranks(3, [&](int r) {
    DistConfig c;
    c.world_size = 3;
    c.rank = c.local_rank = r;
    c.master_port = port;
    auto ctx = init_distributed(c, Device::CPU, {30, 0.05, 1.0});
    if (r == 1) raise(SIGKILL);  // dies before its part of the all-reduce
    Tensor t = Tensor::from_f32({1.0f}, {1});
    const auto t0 = std::chrono::steady_clock::now();
    try {
      ctx->comm->all_reduce(t, ReduceOp::Sum);
      return 1;
    } catch (const Error& e) {
      const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "rank %d after %.2f s: %s\n", r, took, e.what());
      if (std::string(e.what()).find("rank 1") == std::string::npos) return 2;
      if (took > 5) return 3;
    }
    if (r == 2) ctx->store->set("seen", "1");
    if (r == 0) ctx->store->get("seen", 5);
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 128 + SIGKILL, 0}));
}

}  // namespace
}  // namespace qtune
