// A small key-value store over TCP for the ranks of one distributed run (the role of torch's TCPStore):
// rank 0 serves it on MASTER_ADDR:MASTER_PORT, every rank (rank 0 too) talks to it as a client. It carries
// what the ranks must agree on before NCCL exists: the NCCL unique id, barriers, heartbeats, and (on the
// CPU) the reductions of StoreCommunicator. Every wait has a deadline; a timeout or a lost server throws
// ErrorKind::Io naming this rank, the key and the address.
//
//   TcpStore s({"127.0.0.1", 29500, rank, world, 30.0});
//   s.set("nccl_id", bytes);  std::string id = s.get("nccl_id");  // get waits until the key exists
//   s.barrier("init");                                             // all ranks reach "init"
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace qtune {

struct StoreOptions {
  std::string host = "127.0.0.1";
  int port = 29500;
  int rank = 0;
  int world_size = 1;
  double timeout_s = 300;  // default deadline of connect, get, wait and barrier
};

class TcpStore {
 public:
  // Rank 0 starts the server first; every rank then connects, retrying until timeout_s.
  explicit TcpStore(const StoreOptions& o);
  ~TcpStore();
  TcpStore(const TcpStore&) = delete;
  TcpStore& operator=(const TcpStore&) = delete;

  void set(const std::string& key, const std::string& value);
  // The value of key, waiting for it up to timeout_s (< 0: the store's default).
  std::string get(const std::string& key, double timeout_s = -1);
  // Whether key is set now (no waiting).
  bool check(const std::string& key);
  // The value of key when set, without waiting.
  bool try_get(const std::string& key, std::string* value);
  // Adds delta to the integer under key (absent: 0) and returns the new value.
  int64_t add(const std::string& key, int64_t delta);
  // Removes key (absent: nothing happens).
  void erase(const std::string& key);
  void wait(const std::vector<std::string>& keys, double timeout_s = -1);
  // Every rank calls barrier(name) once per name; returns when all world_size ranks have.
  void barrier(const std::string& name, double timeout_s = -1);

  const StoreOptions& options() const { return o_; }
  std::string address() const;  // "host:port"

 private:
  std::string request(uint8_t op, const std::string& key, const std::string& value);
  [[noreturn]] void fail(const std::string& what) const;
  void serve();
  void serve_client(int fd);

  StoreOptions o_;
  int fd_ = -1;  // client connection
  std::mutex io_mu_;
  // Server side (rank 0 only).
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread server_;
  std::vector<std::thread> client_threads_;
  std::vector<int> client_fds_;
  std::mutex mu_;  // guards kv_ and client_fds_
  std::map<std::string, std::string> kv_;
};

}  // namespace qtune
