// TcpStore and Heartbeat across forked processes on localhost: values cross, a missing rank times out
// within the bound with a message naming the rank and address, a rank that dies is reported by the others.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <string>
#include <thread>

#include "core/error.h"
#include "dist/heartbeat.h"
#include "dist/tcp_store.h"
#include "dist_test_util.h"

namespace qtune {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

TEST(TcpStore, RanksExchangeValues) {
  const int port = test::fresh_port();
  auto codes = test::run_ranks(3, [&](int r) {
    TcpStore s({"127.0.0.1", port, r, 3, 10});
    s.set("key/" + std::to_string(r), "value of " + std::to_string(r));
    for (int q = 0; q < 3; ++q)
      if (s.get("key/" + std::to_string(q)) != "value of " + std::to_string(q)) return 1;
    if (s.add("counter", r + 1) < r + 1) return 2;
    s.barrier("counted");
    std::string v;
    if (!s.try_get("counter", &v) || v != "6") return 3;
    s.barrier("done");
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0, 0}));
}

TEST(TcpStore, MissingRankTimesOutNamingRankAndAddress) {
  const int port = test::fresh_port();
  TcpStore s({"127.0.0.1", port, 0, 2, 0.5});  // rank 1 never comes
  const auto t0 = Clock::now();
  try {
    s.barrier("start");
    FAIL() << "barrier returned without rank 1";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("rank 0"), std::string::npos) << m;
    EXPECT_NE(m.find("timed out"), std::string::npos) << m;
    EXPECT_NE(m.find("1 of 2 ranks"), std::string::npos) << m;
    EXPECT_NE(m.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << m;
  }
  EXPECT_LT(since(t0), 2.0);
  try {
    s.get("never", 0.2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'never'"), std::string::npos) << e.what();
  }
}

TEST(TcpStore, UnreachableRankZeroTimesOut) {
  const int port = test::fresh_port();
  const auto t0 = Clock::now();
  try {
    TcpStore s({"127.0.0.1", port, 1, 2, 0.5});
    FAIL() << "connected to nobody";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("rank 1"), std::string::npos) << m;
    EXPECT_NE(m.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << m;
  }
  EXPECT_LT(since(t0), 2.0);
}

// A rank killed mid-run (SIGKILL, no goodbye) is named by every other rank within the heartbeat bound.
TEST(Heartbeat, DeadRankIsDetectedAndNamed) {
  const int port = test::fresh_port();
  auto codes = test::run_ranks(3, [&](int r) {
    StoreOptions o{"127.0.0.1", port, r, 3, 10};
    TcpStore s(o);
    Heartbeat hb(o, 0.05, 1.0);
    s.barrier("up");
    if (r == 2) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      raise(SIGKILL);
    }
    const auto t0 = Clock::now();
    while (!hb.failed() && since(t0) < 10) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!hb.failed()) return 10;
    const double took = since(t0);
    const std::string m = hb.failure();
    std::fprintf(stderr, "rank %d after %.2f s: %s\n", r, took, m.c_str());
    if (m.find("rank 2 stopped responding") == std::string::npos) return 11;
    if (took > 3.0) return 12;
    try {
      hb.check();
      return 13;
    } catch (const Error&) {
    }
    // Rank 0 keeps the store up until rank 1 has seen the failure too.
    if (r == 1) s.set("seen", "1");
    if (r == 0) s.get("seen", 5);
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0, 128 + SIGKILL}));
}

// When rank 0 (the store) dies, the others learn it from their heartbeat.
TEST(Heartbeat, DeadStoreIsDetected) {
  const int port = test::fresh_port();
  auto codes = test::run_ranks(2, [&](int r) {
    StoreOptions o{"127.0.0.1", port, r, 2, 10};
    TcpStore s(o);
    Heartbeat hb(o, 0.05, 1.0);
    s.barrier("up");
    if (r == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      raise(SIGKILL);
    }
    const auto t0 = Clock::now();
    while (!hb.failed() && since(t0) < 10) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::fprintf(stderr, "rank 1 after %.2f s: %s\n", since(t0), hb.failure().c_str());
    return hb.failed() && since(t0) < 3.0 && hb.failure().find("rank 0") != std::string::npos ? 0 : 1;
  });
  EXPECT_EQ(codes, (std::vector<int>{128 + SIGKILL, 0}));
}

}  // namespace
}  // namespace qtune
