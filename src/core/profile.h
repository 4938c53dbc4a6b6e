// Opt-in timing of the work of a training step by named section, for finding where the time goes
// (QTUNE_PROFILE=1 in the environment; `qtune finetune` prints the table at the end). A section is a scope:
//
//   { QT_PROFILE("bwd.attention"); attention_backward(...); }
//
// On the GPU each scope records a pair of CUDA events on the legacy default stream (which orders them with
// the kernels' blocking stream), so the times are GPU times and the host never waits until the report; on
// the CPU it reads the steady clock. Sections may nest (a parent's time includes its children's); the table
// lists each name's total, call count and share of the profiled wall time. Disabled, a scope costs one
// branch.
#pragma once
#include <string>

#include "core/tensor.h"

namespace qtune {

// Starts collecting for work on dev (when QTUNE_PROFILE is set; otherwise does nothing). Returns whether on.
bool profile_start(Device dev);
bool profiling();

class ProfileScope {
 public:
  explicit ProfileScope(const char* name);
  ~ProfileScope();
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  int slot_ = -1;
};

// The table of sections collected since profile_start (waits for the GPU), then clears them.
std::string profile_report();

}  // namespace qtune

#define QT_PROFILE_CAT2(a, b) a##b
#define QT_PROFILE_CAT(a, b) QT_PROFILE_CAT2(a, b)
#define QT_PROFILE(name) ::qtune::ProfileScope QT_PROFILE_CAT(qt_profile_, __LINE__)(name)
