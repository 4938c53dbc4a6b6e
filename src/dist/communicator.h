// Collectives between the ranks of a run, behind one interface with three backends:
//   LocalCommunicator  world size 1: every collective is the identity (no NCCL needed);
//   StoreCommunicator  CPU tensors through the TcpStore (each rank posts its bytes, every rank sums all
//                      ranks' in rank order, so results are bit-identical on every rank); slow, for CPU
//                      runs and tests;
//   NcclCommunicator   CUDA tensors through NCCL (dist/nccl_communicator.cpp), unique id exchanged over
//                      the store, NCCL_NVLS_ENABLE=0 forced before init, non-blocking communicator polled
//                      with a deadline: a peer that dies (heartbeat) or an NCCL error ends in
//                      ncclCommAbort and an ErrorKind::Io naming the rank, never a hang.
// init_distributed builds the whole context (store, heartbeat, communicator) from a DistConfig.
//
//   auto ctx = init_distributed(dist_config_from_env(), Device::CUDA);
//   ctx->comm->all_reduce(grad, ReduceOp::Sum);          // F32 [..], in place, same shape on all ranks
//   double n = ctx->comm->all_reduce_scalar(local_count); // Σ over ranks
//   ctx->comm->all_gather(shard, full);                   // full [world·n] ← every rank's shard [n]
//   int64_t t = ctx->comm->start_all_gather(shard, full); // the same, queued (FSDP prefetch) ...
//   ctx->comm->wait(t);                                   // ... and waited for before full is read
#pragma once
#include <memory>
#include <string>

#include "core/tensor.h"
#include "dist/dist_config.h"
#include "dist/heartbeat.h"
#include "dist/tcp_store.h"

namespace qtune {

enum class ReduceOp { Sum, Avg };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // In place over a contiguous F32 tensor on the backend's device.
  virtual void all_reduce(Tensor& t, ReduceOp op) = 0;
  virtual void broadcast(Tensor& t, int root) = 0;
  // full [world · n] (contiguous, any dtype: bytes are copied) ← the shards [n] of ranks 0, 1, ... in
  // order; shard has the same dtype and size on every rank.
  virtual void all_gather(const Tensor& shard, Tensor& full) = 0;
  // Σ (or mean) of one host value over the ranks, exact for integer counts below 2^53.
  virtual double all_reduce_scalar(double v, ReduceOp op = ReduceOp::Sum) = 0;
  // Waits until every rank gets here (bounded by the store timeout).
  virtual void barrier(const std::string& name) = 0;
  virtual Device device() const = 0;

  // Asynchronous forms, for FSDP's prefetch and the gradient all-reduce overlapped with the backward.
  // start_* queues the collective after the work already queued on the compute stream and returns a
  // ticket (> 0); wait(ticket) returns once that collective and every one started before it are done
  // (the host waits, watching the peers, so a dead rank ends the wait with an error, never a hang).
  // The tensors must stay alive and untouched until then. These defaults run the blocking call at once
  // (CPU backends); NCCL queues on a communication stream ordered by events. Blocking collectives first
  // wait for every started one.
  virtual int64_t start_all_gather(const Tensor& shard, Tensor& full) {
    all_gather(shard, full);
    return ++tickets_;
  }
  virtual int64_t start_all_reduce(Tensor& t, ReduceOp op) {
    all_reduce(t, op);
    return ++tickets_;
  }
  virtual void wait(int64_t ticket) { (void)ticket; }

 protected:
  int64_t tickets_ = 0;
};

class LocalCommunicator : public Communicator {
 public:
  explicit LocalCommunicator(Device d) : dev_(d) {}
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  void all_reduce(Tensor&, ReduceOp) override {}
  void broadcast(Tensor&, int) override {}
  void all_gather(const Tensor& shard, Tensor& full) override;  // a copy
  double all_reduce_scalar(double v, ReduceOp) override { return v; }
  void barrier(const std::string&) override {}
  Device device() const override { return dev_; }

 private:
  Device dev_;
};

class StoreCommunicator : public Communicator {
 public:
  // hb (optional): a failed heartbeat ends any wait at once with its message. CPU tensors only.
  StoreCommunicator(TcpStore& store, const Heartbeat* hb) : store_(store), hb_(hb) {}
  int rank() const override { return store_.options().rank; }
  int world_size() const override { return store_.options().world_size; }
  void all_reduce(Tensor& t, ReduceOp op) override;
  void broadcast(Tensor& t, int root) override;
  void all_gather(const Tensor& shard, Tensor& full) override;
  double all_reduce_scalar(double v, ReduceOp op) override;
  void barrier(const std::string& name) override;
  Device device() const override { return Device::CPU; }

 private:
  std::string fetch(const std::string& key);  // waits, watching the heartbeat
  // Posts this rank's bytes and returns every rank's (same size on all), in rank order.
  void exchange_bytes(const std::string& tag, const void* data, size_t bytes, std::vector<std::string>* all);
  TcpStore& store_;
  const Heartbeat* hb_;
  int64_t seq_ = 0;
  std::string last_post_;  // this rank's previous all-reduce buffer in the store, erased one round later
};

// NCCL over CUDA tensors; throws ErrorKind::Unsupported in builds without NCCL.
std::unique_ptr<Communicator> make_nccl_communicator(TcpStore& store, const Heartbeat* hb, int local_rank,
                                                     double timeout_s);
bool nccl_available();  // compiled with NCCL
// Makes GPU local_rank % device count current for this process (call before any CUDA work); no-op in
// CPU-only builds.
void bind_local_device(int local_rank);

struct DistContext {
  DistConfig cfg;
  std::unique_ptr<TcpStore> store;
  std::unique_ptr<Heartbeat> heartbeat;
  std::unique_ptr<Communicator> comm;
  bool is_main() const { return cfg.rank == 0; }
  // Marks this rank finished (no false alarms at exit) after a last barrier.
  void finish();
};

struct DistOptions {
  double timeout_s = 300;           // rendezvous, barriers, a collective's wait
  double heartbeat_interval_s = 1;  // bump period
  double heartbeat_timeout_s = 30;  // a quiet peer is dead after this
};

// DistOptions with QTUNE_DIST_TIMEOUT / QTUNE_HEARTBEAT_TIMEOUT (seconds) from the environment when set.
DistOptions dist_options_from_env();

// World size 1: a LocalCommunicator and no store. Otherwise the store (rank 0 serves), a heartbeat and
// the communicator of dev (CPU: StoreCommunicator; CUDA: NCCL on device local_rank).
std::unique_ptr<DistContext> init_distributed(const DistConfig& cfg, Device dev, const DistOptions& o = {});

}  // namespace qtune
