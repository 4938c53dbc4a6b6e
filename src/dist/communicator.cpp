// StoreCommunicator and init_distributed (see communicator.h).
#include "dist/communicator.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "core/error.h"

namespace qtune {

std::string StoreCommunicator::fetch(const std::string& key) {
  const auto t0 = std::chrono::steady_clock::now();
  std::string v;
  int sleep_us = 50;
  while (!store_.try_get(key, &v)) {
    if (hb_) hb_->check();
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (waited > store_.options().timeout_s)
      throw_error(ErrorKind::Io, "rank ", rank(), ": timed out after ", waited, " s waiting for '", key,
                  "' (store at ", store_.address(), ")");
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
    sleep_us = std::min(sleep_us * 2, 2000);
  }
  return v;
}

void StoreCommunicator::exchange_bytes(const std::string& tag, const void* data, size_t bytes,
                                       std::vector<std::string>* all) {
  const int64_t seq = seq_++;
  const std::string base = tag + "/" + std::to_string(seq) + "/";
  store_.set(base + std::to_string(rank()), std::string((const char*)data, bytes));
  all->resize(world_size());
  for (int r = 0; r < world_size(); ++r) {
    (*all)[r] = fetch(base + std::to_string(r));
    if ((*all)[r].size() != bytes)
      throw_error(ErrorKind::Shape, "rank ", rank(), ": ", tag, " of ", bytes, " bytes, but rank ", r,
                  " sent ", (*all)[r].size(), " (the ranks disagree on what to reduce)");
  }
  // Every rank has posted for seq, so every rank is done reading seq - 1: drop this rank's old post.
  if (!last_post_.empty()) store_.erase(last_post_);
  last_post_ = base + std::to_string(rank());
}

void StoreCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  if (t.dtype() != DType::F32 || t.is_cuda())
    throw_error(ErrorKind::Unsupported, "StoreCommunicator::all_reduce: F32 CPU tensors only, got ",
                t.describe());
  std::vector<std::string> all;
  exchange_bytes("ar", t.raw(), t.nbytes(), &all);
  float* out = t.data<float>();
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) out[i] = 0.0f;
  for (const std::string& s : all) {  // rank order: the same sum on every rank
    const float* p = (const float*)s.data();
    for (int64_t i = 0; i < n; ++i) out[i] += p[i];
  }
  if (op == ReduceOp::Avg)
    for (int64_t i = 0; i < n; ++i) out[i] /= (float)world_size();
}

double StoreCommunicator::all_reduce_scalar(double v, ReduceOp op) {
  std::vector<std::string> all;
  exchange_bytes("ars", &v, sizeof v, &all);
  double s = 0;
  for (const std::string& b : all) {
    double x;
    std::memcpy(&x, b.data(), sizeof x);
    s += x;
  }
  return op == ReduceOp::Avg ? s / world_size() : s;
}

void StoreCommunicator::broadcast(Tensor& t, int root) {
  if (t.is_cuda()) throw_error(ErrorKind::Unsupported, "StoreCommunicator::broadcast: CPU tensors only");
  const std::string key = "bc/" + std::to_string(seq_++);
  if (rank() == root) {
    store_.set(key, std::string((const char*)t.raw(), t.nbytes()));
    return;
  }
  const std::string v = fetch(key);
  if (v.size() != t.nbytes())
    throw_error(ErrorKind::Shape, "rank ", rank(), ": broadcast of ", v.size(), " bytes into ", t.describe());
  std::memcpy(t.raw(), v.data(), v.size());
}

// The bytes of a contiguous tensor, as U8 [nbytes] sharing its storage.
static Tensor bytes_view(const Tensor& t) {
  return Tensor::borrow(t.raw(), {(int64_t)t.nbytes()}, DType::U8, t.device(), nullptr);
}

static void check_gather(const Tensor& shard, const Tensor& full, int world, const char* who) {
  if (full.dtype() != shard.dtype() || full.numel() != shard.numel() * world)
    throw_error(ErrorKind::Shape, who, ": all_gather of ", shard.describe(), " over ", world, " ranks into ",
                full.describe());
}

void LocalCommunicator::all_gather(const Tensor& shard, Tensor& full) {
  check_gather(shard, full, 1, "LocalCommunicator");
  full.copy_from(shard);
}

void StoreCommunicator::all_gather(const Tensor& shard, Tensor& full) {
  if (shard.is_cuda() || full.is_cuda())
    throw_error(ErrorKind::Unsupported, "StoreCommunicator::all_gather: CPU tensors only");
  check_gather(shard, full, world_size(), "StoreCommunicator");
  std::vector<std::string> all;
  exchange_bytes("ag", shard.raw(), shard.nbytes(), &all);
  Tensor out = bytes_view(full);
  for (int r = 0; r < world_size(); ++r)
    std::memcpy(out.data<uint8_t>() + (size_t)r * shard.nbytes(), all[r].data(), all[r].size());
}

void StoreCommunicator::barrier(const std::string& name) {
  const std::string key = "barrier/" + name;
  store_.add(key, 1);
  const auto t0 = std::chrono::steady_clock::now();
  while (true) {
    std::string v;
    if (store_.try_get(key, &v) && std::stoll(v) >= world_size()) return;
    if (hb_) hb_->check();
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() >
        store_.options().timeout_s)
      throw_error(ErrorKind::Io, "rank ", rank(), ": timed out in barrier '", name, "' (store at ",
                  store_.address(), ")");
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
}

void DistContext::finish() {
  if (!store) return;
  comm->barrier("finish");
  if (heartbeat) heartbeat->stop();
}

DistOptions dist_options_from_env() {
  DistOptions o;
  auto read = [](const char* name, double* out) {
    const char* v = std::getenv(name);
    if (!v) return;
    char* end = nullptr;
    const double x = std::strtod(v, &end);
    if (*v == '\0' || *end != '\0' || !(x > 0))
      throw_error(ErrorKind::Usage, "environment variable ", name, "='", v, "': expected seconds > 0");
    *out = x;
  };
  read("QTUNE_DIST_TIMEOUT", &o.timeout_s);
  read("QTUNE_HEARTBEAT_TIMEOUT", &o.heartbeat_timeout_s);
  o.heartbeat_interval_s = std::min(o.heartbeat_interval_s, o.heartbeat_timeout_s / 4);
  return o;
}

std::unique_ptr<DistContext> init_distributed(const DistConfig& cfg, Device dev, const DistOptions& o) {
  auto ctx = std::make_unique<DistContext>();
  ctx->cfg = cfg;
  if (!cfg.distributed()) {
    ctx->comm = std::make_unique<LocalCommunicator>(dev);
    return ctx;
  }
  StoreOptions so{cfg.master_addr, cfg.master_port, cfg.rank, cfg.world_size, o.timeout_s};
  ctx->store = std::make_unique<TcpStore>(so);
  ctx->store->barrier("rendezvous");
  ctx->heartbeat = std::make_unique<Heartbeat>(so, o.heartbeat_interval_s, o.heartbeat_timeout_s);
  if (dev == Device::CUDA)
    ctx->comm = make_nccl_communicator(*ctx->store, ctx->heartbeat.get(), cfg.local_rank, o.timeout_s);
  else
    ctx->comm = std::make_unique<StoreCommunicator>(*ctx->store, ctx->heartbeat.get());
  return ctx;
}

}  // namespace qtune
