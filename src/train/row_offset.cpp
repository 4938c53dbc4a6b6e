// activation_row_offset and RowOffsetScope (see row_offset.h). One offset per host thread: the step's
// launches come from one thread.
#include "train/row_offset.h"

namespace qtune {
namespace {
thread_local int64_t g_row_offset = 0;
}

int64_t activation_row_offset() {
  return g_row_offset;
}

RowOffsetScope::RowOffsetScope(int64_t r0) : prev_(g_row_offset) {
  g_row_offset = r0;
}

RowOffsetScope::~RowOffsetScope() {
  g_row_offset = prev_;
}

}  // namespace qtune
