// Heartbeat (see heartbeat.h).
#include "dist/heartbeat.h"

#include <chrono>
#include <cstdio>
#include <vector>

#include "core/error.h"

namespace qtune {

using Clock = std::chrono::steady_clock;

Heartbeat::Heartbeat(const StoreOptions& o, double interval_s, double timeout_s,
                     std::function<void(const std::string&)> on_failure)
    : o_(o), interval_s_(interval_s), timeout_s_(timeout_s), on_failure_(std::move(on_failure)) {
  StoreOptions c = o_;
  c.rank = o_.rank == 0 ? o_.world_size : o_.rank;  // a client only: never serve a second store
  c.world_size = o_.world_size + 1;
  c.timeout_s = std::min(o_.timeout_s, timeout_s_);
  store_ = std::make_unique<TcpStore>(c);
  store_->set("hb/" + std::to_string(o_.rank), "0");
  thread_ = std::thread([this] { loop(); });
}

Heartbeat::~Heartbeat() {
  stop();
}

void Heartbeat::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  try {
    store_->set("hb/" + std::to_string(o_.rank), "done");
  } catch (const Error&) {
  }
}

std::string Heartbeat::failure() const {
  std::lock_guard<std::mutex> g(mu_);
  return failure_;
}

void Heartbeat::check() const {
  if (failed_) throw_error(ErrorKind::Io, failure());
}

void Heartbeat::loop() {
  const int n = o_.world_size;
  std::vector<std::string> last(n);
  std::vector<Clock::time_point> seen(n, Clock::now());
  int64_t beat = 0;
  auto fail = [&](const std::string& why) {
    {
      std::lock_guard<std::mutex> g(mu_);
      failure_ = why;
    }
    failed_ = true;
    if (on_failure_) on_failure_(why);
  };
  while (true) {
    {
      std::unique_lock<std::mutex> g(mu_);
      cv_.wait_for(g, std::chrono::duration<double>(interval_s_), [&] { return stop_.load(); });
      if (stop_) return;
    }
    try {
      store_->set("hb/" + std::to_string(o_.rank), std::to_string(++beat));
      for (int r = 0; r < n; ++r) {
        if (r == o_.rank) continue;
        std::string v;
        const bool has = store_->try_get("hb/" + std::to_string(r), &v);
        if (has && v == "done") continue;
        if (has && v != last[r]) {
          last[r] = v;
          seen[r] = Clock::now();
          continue;
        }
        const double quiet = std::chrono::duration<double>(Clock::now() - seen[r]).count();
        if (quiet > timeout_s_) {
          char buf[160];
          std::snprintf(buf, sizeof buf, "rank %d stopped responding: no heartbeat for %.1f s", r, quiet);
          fail("rank " + std::to_string(o_.rank) + ": " + buf + " (store at " + store_->address() +
               "); it has probably died, see its own log");
          return;
        }
      }
    } catch (const Error& e) {
      fail(std::string(e.what()) + "; rank 0, which serves the store, has probably died");
      return;
    }
  }
}

}  // namespace qtune
