// NcclCommunicator (see communicator.h): NCCL collectives on the legacy default stream (the stream every
// qtune kernel is ordered with), on a non-blocking communicator. After each call the host polls
// cudaStreamQuery, ncclCommGetAsyncError and the heartbeat, so a dead peer or an NCCL error aborts the
// communicator (ncclCommAbort) and throws within a bounded time instead of hanging in a collective.
// The asynchronous forms (start_all_gather, start_all_reduce) run on a second, non-blocking stream: each
// first waits (cudaStreamWaitEvent) for an event recorded on the legacy stream, so it sees the work queued
// before it, and records a "done" event after itself; wait(ticket) polls that event with the same watch.
// A blocking collective first waits for every started one, so the NCCL calls of this communicator never
// run concurrently on two streams.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"

#if defined(QTUNE_HAVE_CUDA)
#include <cuda_runtime.h>
#endif
#if defined(QTUNE_HAVE_NCCL)
#include <nccl.h>
#endif

namespace qtune {

void bind_local_device(int local_rank) {
#if defined(QTUNE_HAVE_CUDA)
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) == cudaSuccess && ndev > 0) cudaSetDevice(local_rank % ndev);
#endif
}

#if defined(QTUNE_HAVE_NCCL)
namespace {

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(TcpStore& store, const Heartbeat* hb, int local_rank, double timeout_s)
      : store_(store), hb_(hb), timeout_s_(timeout_s) {
    ::setenv("NCCL_NVLS_ENABLE", "0", 1);  // NVLink multicast off in every process (device rules)
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) fail_now("no CUDA device for NCCL");
    cudaSetDevice(local_rank % ndev);
    ncclUniqueId id;
    if (rank() == 0) {
      check(ncclGetUniqueId(&id), "ncclGetUniqueId");
      store_.set("nccl_unique_id", std::string((const char*)&id, sizeof id));
    } else {
      const std::string s = store_.get("nccl_unique_id", timeout_s_);
      std::memcpy(&id, s.data(), sizeof id);
    }
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    const ncclResult_t r = ncclCommInitRankConfig(&comm_, world_size(), id, rank(), &cfg);
    if (r != ncclSuccess && r != ncclInProgress)
      fail_now(std::string("ncclCommInitRankConfig: ") + ncclGetErrorString(r));
    settle("ncclCommInitRankConfig");
    cudaMalloc(&scalar_, sizeof(double));
  }
  ~NcclCommunicator() override {
    if (scalar_) cudaFree(scalar_);
    for (auto& e : events_) cudaEventDestroy(e.second);
    for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
    if (ready_) cudaEventDestroy(ready_);
    if (side_) cudaStreamDestroy(side_);
    if (comm_) {
      if (aborted_) return;
      ncclCommFinalize(comm_);
      settle_quiet();
      ncclCommDestroy(comm_);
    }
  }
  int rank() const override { return store_.options().rank; }
  int world_size() const override { return store_.options().world_size; }
  Device device() const override { return Device::CUDA; }

  void all_reduce(Tensor& t, ReduceOp op) override {
    if (t.dtype() != DType::F32 || !t.is_cuda())
      throw_error(ErrorKind::Unsupported, "NCCL all_reduce: F32 CUDA tensors only, got ", t.describe());
    drain();
    check(ncclAllReduce(t.raw(), t.raw(), (size_t)t.numel(), ncclFloat32,
                        op == ReduceOp::Avg ? ncclAvg : ncclSum, comm_, cudaStreamLegacy),
          "ncclAllReduce");
    wait("ncclAllReduce");
  }
  void broadcast(Tensor& t, int root) override {
    if (!t.is_cuda()) throw_error(ErrorKind::Unsupported, "NCCL broadcast: CUDA tensors only");
    drain();
    check(ncclBroadcast(t.raw(), t.raw(), t.nbytes(), ncclUint8, root, comm_, cudaStreamLegacy),
          "ncclBroadcast");
    wait("ncclBroadcast");
  }
  void all_gather(const Tensor& shard, Tensor& full) override {
    check_gather(shard, full);
    drain();
    check(ncclAllGather(shard.raw(), full.raw(), shard.nbytes(), ncclUint8, comm_, cudaStreamLegacy),
          "ncclAllGather");
    wait("ncclAllGather");
  }
  int64_t start_all_gather(const Tensor& shard, Tensor& full) override {
    check_gather(shard, full);
    begin_side();
    check(ncclAllGather(shard.raw(), full.raw(), shard.nbytes(), ncclUint8, comm_, side_), "ncclAllGather");
    return end_side("ncclAllGather");
  }
  int64_t start_all_reduce(Tensor& t, ReduceOp op) override {
    if (t.dtype() != DType::F32 || !t.is_cuda())
      throw_error(ErrorKind::Unsupported, "NCCL all_reduce: F32 CUDA tensors only, got ", t.describe());
    begin_side();
    check(ncclAllReduce(t.raw(), t.raw(), (size_t)t.numel(), ncclFloat32,
                        op == ReduceOp::Avg ? ncclAvg : ncclSum, comm_, side_),
          "ncclAllReduce");
    return end_side("ncclAllReduce");
  }
  void wait(int64_t ticket) override {
    const auto t0 = std::chrono::steady_clock::now();
    while (!events_.empty() && events_.front().first <= ticket) {
      cudaEvent_t ev = events_.front().second;
      while (true) {
        const cudaError_t e = cudaEventQuery(ev);
        if (e == cudaSuccess) break;
        if (e != cudaErrorNotReady)
          fail_now(std::string("collective ") + std::to_string(events_.front().first) + ": CUDA error " +
                   cudaGetErrorString(e));
        ncclResult_t st = ncclSuccess;
        ncclCommGetAsyncError(comm_, &st);
        if (st != ncclSuccess && st != ncclInProgress) check(st, "asynchronous collective");
        watch("asynchronous collective", t0);
      }
      free_events_.push_back(ev);
      events_.pop_front();
    }
  }
  double all_reduce_scalar(double v, ReduceOp op) override {
    drain();
    cudaMemcpy(scalar_, &v, sizeof v, cudaMemcpyHostToDevice);
    check(ncclAllReduce(scalar_, scalar_, 1, ncclFloat64, op == ReduceOp::Avg ? ncclAvg : ncclSum, comm_,
                        cudaStreamLegacy),
          "ncclAllReduce(scalar)");
    wait("ncclAllReduce(scalar)");
    cudaMemcpy(&v, scalar_, sizeof v, cudaMemcpyDeviceToHost);
    return v;
  }
  void barrier(const std::string& name) override {
    drain();
    store_.barrier(name, timeout_s_);
  }

 private:
  void check_gather(const Tensor& shard, const Tensor& full) {
    if (!shard.is_cuda() || !full.is_cuda() || full.dtype() != shard.dtype() ||
        full.numel() != shard.numel() * world_size())
      throw_error(ErrorKind::Shape, "NCCL all_gather: ", shard.describe(), " over ", world_size(),
                  " ranks into ", full.describe(), " (CUDA tensors, full = world x shard)");
  }
  // Waits for every started collective.
  void drain() {
    if (!events_.empty()) wait(events_.back().first);
  }
  // The side stream waits for what the legacy stream has queued so far.
  void begin_side() {
    if (!side_) {
      if (cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking) != cudaSuccess ||
          cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming) != cudaSuccess)
        fail_now("cannot create the communication stream");
    }
    cudaEventRecord(ready_, cudaStreamLegacy);
    cudaStreamWaitEvent(side_, ready_, 0);
  }
  int64_t end_side(const char* what) {
    settle(what);
    cudaEvent_t ev = nullptr;
    if (!free_events_.empty()) {
      ev = free_events_.back();
      free_events_.pop_back();
    } else if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess) {
      fail_now("cannot create a CUDA event");
    }
    cudaEventRecord(ev, side_);
    events_.emplace_back(++tickets_, ev);
    return tickets_;
  }
  [[noreturn]] void fail_now(const std::string& what) {
    if (comm_ && !aborted_) {
      aborted_ = true;
      ncclCommAbort(comm_);
    }
    throw_error(ErrorKind::Io, "rank ", rank(), ": ", what);
  }
  void check(ncclResult_t r, const char* what) {
    if (r == ncclSuccess || r == ncclInProgress) return;
    fail_now(std::string(what) + " failed: " + ncclGetErrorString(r) + " (" + ncclGetLastError(comm_) + ")");
  }
  // Polls until the communicator is out of ncclInProgress (init, enqueue), watching peers and time.
  void settle(const char* what) {
    const auto t0 = std::chrono::steady_clock::now();
    while (true) {
      ncclResult_t st = ncclSuccess;
      ncclCommGetAsyncError(comm_, &st);
      if (st == ncclSuccess) return;
      if (st != ncclInProgress) check(st, what);
      watch(what, t0);
    }
  }
  void settle_quiet() {
    const auto t0 = std::chrono::steady_clock::now();
    ncclResult_t st = ncclInProgress;
    while (st == ncclInProgress &&
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 5) {
      ncclCommGetAsyncError(comm_, &st);
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  // Waits for the stream, with the same watch.
  void wait(const char* what) {
    settle(what);
    const auto t0 = std::chrono::steady_clock::now();
    while (true) {
      const cudaError_t e = cudaStreamQuery(cudaStreamLegacy);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) fail_now(std::string(what) + ": CUDA error " + cudaGetErrorString(e));
      ncclResult_t st = ncclSuccess;
      ncclCommGetAsyncError(comm_, &st);
      if (st != ncclSuccess && st != ncclInProgress) check(st, what);
      watch(what, t0);
    }
  }
  void watch(const char* what, std::chrono::steady_clock::time_point t0) {
    if (hb_ && hb_->failed()) fail_now(std::string(what) + " abandoned: " + hb_->failure());
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (waited > timeout_s_)
      fail_now(std::string(what) + " timed out after " + std::to_string(waited) + " s (store at " +
               store_.address() + ")");
    std::this_thread::sleep_for(std::chrono::microseconds(waited < 0.01 ? 5 : 200));
  }

  TcpStore& store_;
  const Heartbeat* hb_;
  double timeout_s_;
  ncclComm_t comm_ = nullptr;
  bool aborted_ = false;
  void* scalar_ = nullptr;
  cudaStream_t side_ = nullptr;  // the asynchronous collectives' stream
  cudaEvent_t ready_ = nullptr;  // recorded on the legacy stream before each asynchronous collective
  std::deque<std::pair<int64_t, cudaEvent_t>> events_;  // started, not yet waited for: (ticket, done)
  std::vector<cudaEvent_t> free_events_;
};

}  // namespace

bool nccl_available() {
  return true;
}

std::unique_ptr<Communicator> make_nccl_communicator(TcpStore& store, const Heartbeat* hb, int local_rank,
                                                     double timeout_s) {
  return std::make_unique<NcclCommunicator>(store, hb, local_rank, timeout_s);
}

#else

bool nccl_available() {
  return false;
}

std::unique_ptr<Communicator> make_nccl_communicator(TcpStore& store, const Heartbeat*, int, double) {
  throw_error(ErrorKind::Unsupported, "rank ", store.options().rank,
              ": multi-rank GPU training needs NCCL, and this build has none (build with CUDA and NCCL, "
              "or train on the CPU / with one process)");
}

#endif

}  // namespace qtune
