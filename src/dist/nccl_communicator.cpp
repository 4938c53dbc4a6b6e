// NcclCommunicator (see communicator.h): NCCL collectives on the legacy default stream (the stream every
// qtune kernel is ordered with), on a non-blocking communicator. After each call the host polls
// cudaStreamQuery, ncclCommGetAsyncError and the heartbeat, so a dead peer or an NCCL error aborts the
// communicator (ncclCommAbort) and throws within a bounded time instead of hanging in a collective.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

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
    check(ncclAllReduce(t.raw(), t.raw(), (size_t)t.numel(), ncclFloat32,
                        op == ReduceOp::Avg ? ncclAvg : ncclSum, comm_, cudaStreamLegacy),
          "ncclAllReduce");
    wait("ncclAllReduce");
  }
  void broadcast(Tensor& t, int root) override {
    if (!t.is_cuda()) throw_error(ErrorKind::Unsupported, "NCCL broadcast: CUDA tensors only");
    check(ncclBroadcast(t.raw(), t.raw(), t.nbytes(), ncclUint8, root, comm_, cudaStreamLegacy),
          "ncclBroadcast");
    wait("ncclBroadcast");
  }
  double all_reduce_scalar(double v, ReduceOp op) override {
    cudaMemcpy(scalar_, &v, sizeof v, cudaMemcpyHostToDevice);
    check(ncclAllReduce(scalar_, scalar_, 1, ncclFloat64, op == ReduceOp::Avg ? ncclAvg : ncclSum, comm_,
                        cudaStreamLegacy),
          "ncclAllReduce(scalar)");
    wait("ncclAllReduce(scalar)");
    cudaMemcpy(&v, scalar_, sizeof v, cudaMemcpyDeviceToHost);
    return v;
  }
  void barrier(const std::string& name) override { store_.barrier(name, timeout_s_); }

 private:
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
