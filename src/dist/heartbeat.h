// Liveness of the other ranks. Each rank's Heartbeat thread, over its own store connection, bumps
// "hb/<rank>" every interval and reads every other rank's counter; a rank whose counter has not moved
// for timeout_s is declared dead, as is the store itself when it stops answering (rank 0 gone). The
// failure is kept as one message naming the rank (check() throws it) and on_failure runs once, from the
// heartbeat thread (the NCCL communicator hooks ncclCommAbort there, so a rank blocked in a collective
// wakes up). stop() marks this rank as finished ("hb/<rank>" = "done"), which is never a failure.
//
//   Heartbeat hb(store_options, 1.0, 10.0, [&](const std::string& why) { comm.abort(why); });
//   ... hb.check();   // throws ErrorKind::Io "rank 2 stopped responding ..." once a peer is gone
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "dist/tcp_store.h"

namespace qtune {

class Heartbeat {
 public:
  Heartbeat(const StoreOptions& o, double interval_s, double timeout_s,
            std::function<void(const std::string&)> on_failure = nullptr);
  ~Heartbeat();  // calls stop()
  void stop();
  bool failed() const { return failed_; }
  std::string failure() const;
  void check() const;  // throws ErrorKind::Io with failure() when failed

 private:
  void loop();
  StoreOptions o_;
  double interval_s_, timeout_s_;
  std::function<void(const std::string&)> on_failure_;
  std::unique_ptr<TcpStore> store_;
  std::thread thread_;
  std::atomic<bool> stop_{false}, failed_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string failure_;
};

}  // namespace qtune
