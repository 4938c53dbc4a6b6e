// Section profiler (see profile.h).
#include "core/profile.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <vector>
#ifdef QTUNE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace qtune {
namespace {

struct Record {
  const char* name;
  std::chrono::steady_clock::time_point t0, t1;
#ifdef QTUNE_HAVE_CUDA
  cudaEvent_t e0 = nullptr, e1 = nullptr;
#endif
};

struct Profiler {
  bool on = false;
  bool gpu = false;
  size_t used = 0;
  std::vector<Record> records;  // reused across reports (events are created once)
  std::chrono::steady_clock::time_point start;
};

Profiler& prof() {
  static Profiler* p = new Profiler();
  return *p;
}

}  // namespace

bool profile_start(Device dev) {
  Profiler& p = prof();
  const char* env = std::getenv("QTUNE_PROFILE");
  p.on = env && *env && std::string(env) != "0";
  p.gpu = dev == Device::CUDA;
  p.used = 0;
  p.start = std::chrono::steady_clock::now();
  return p.on;
}

bool profiling() {
  return prof().on;
}

ProfileScope::ProfileScope(const char* name) {
  Profiler& p = prof();
  if (!p.on) return;
  if (p.used == p.records.size()) {
    p.records.emplace_back();
#ifdef QTUNE_HAVE_CUDA
    if (p.gpu) {
      cudaEventCreate(&p.records.back().e0);
      cudaEventCreate(&p.records.back().e1);
    }
#endif
  }
  slot_ = (int)p.used++;
  Record& r = p.records[slot_];
  r.name = name;
#ifdef QTUNE_HAVE_CUDA
  if (p.gpu && r.e0) {
    cudaEventRecord(r.e0, 0);
    return;
  }
#endif
  r.t0 = std::chrono::steady_clock::now();
}

ProfileScope::~ProfileScope() {
  if (slot_ < 0) return;
  Record& r = prof().records[slot_];
#ifdef QTUNE_HAVE_CUDA
  if (prof().gpu && r.e1) {
    cudaEventRecord(r.e1, 0);
    return;
  }
#endif
  r.t1 = std::chrono::steady_clock::now();
}

std::string profile_report() {
  Profiler& p = prof();
  if (!p.on) return "";
#ifdef QTUNE_HAVE_CUDA
  if (p.gpu) cudaDeviceSynchronize();
#endif
  const double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - p.start).count();
  std::map<std::string, std::pair<double, int64_t>> by_name;  // ms, calls
  for (size_t i = 0; i < p.used; i++) {
    Record& r = p.records[i];
    double ms = 0;
#ifdef QTUNE_HAVE_CUDA
    if (p.gpu && r.e0) {
      float f = 0;
      cudaEventElapsedTime(&f, r.e0, r.e1);
      ms = f;
    } else
#endif
      ms = std::chrono::duration<double, std::milli>(r.t1 - r.t0).count();
    auto& e = by_name[r.name];
    e.first += ms;
    e.second++;
  }
  std::vector<std::pair<std::string, std::pair<double, int64_t>>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  std::string out = "section                         total ms     calls   share of wall\n";
  char buf[160];
  for (const auto& [name, v] : rows) {
    std::snprintf(buf, sizeof buf, "%-30s %10.1f %9lld %8.1f%%\n", name.c_str(), v.first, (long long)v.second,
                  100.0 * v.first / std::max(wall, 1e-9));
    out += buf;
  }
  std::snprintf(buf, sizeof buf, "%-30s %10.1f  (%s; nested sections are included in their parents)\n",
                "wall", wall, p.gpu ? "GPU event times" : "CPU clock");
  out += buf;
  p.used = 0;
  p.start = std::chrono::steady_clock::now();
  return out;
}

}  // namespace qtune
