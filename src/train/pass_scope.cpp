// pass_id and PassScope (see pass_scope.h). One current pass per host thread; ids from one process-wide
// counter.
#include "train/pass_scope.h"

#include <atomic>

namespace qtune {
namespace {
std::atomic<uint64_t> g_next_id{1};
thread_local uint64_t g_id = 0;
thread_local bool g_backward = false;
}  // namespace

uint64_t pass_id() {
  return g_id;
}

bool pass_for_backward() {
  return g_backward;
}

PassScope::PassScope(bool for_backward) : PassScope(for_backward, 0) {}

PassScope::PassScope(bool for_backward, uint64_t id)
    : id_(id ? id : g_next_id.fetch_add(1)), prev_id_(g_id), prev_backward_(g_backward) {
  g_id = id_;
  g_backward = for_backward;
}

PassScope::~PassScope() {
  g_id = prev_id_;
  g_backward = prev_backward_;
}

}  // namespace qtune
