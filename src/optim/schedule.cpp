// LrSchedule: transformers' schedule lambdas, in double as Python computes them (see schedule.h).
#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace qtune {

const char* schedule_kind_name(ScheduleKind k) {
  switch (k) {
    case ScheduleKind::Constant:
      return "constant";
    case ScheduleKind::ConstantWithWarmup:
      return "constant_with_warmup";
    case ScheduleKind::Linear:
      return "linear";
    case ScheduleKind::Cosine:
      return "cosine";
  }
  return "?";
}

ScheduleKind schedule_kind_from_name(const std::string& name) {
  for (ScheduleKind k :
       {ScheduleKind::Constant, ScheduleKind::ConstantWithWarmup, ScheduleKind::Linear, ScheduleKind::Cosine})
    if (name == schedule_kind_name(k)) return k;
  throw_error(ErrorKind::Usage, "unknown lr scheduler type '", name,
              "' (known: constant, constant_with_warmup, linear, cosine)");
}

int64_t warmup_steps_from_ratio(double warmup_ratio, int64_t total_steps) {
  if (warmup_ratio < 0) throw_error(ErrorKind::Usage, "warmup ratio must be >= 0, got ", warmup_ratio);
  if (warmup_ratio >= 1) return (int64_t)warmup_ratio;
  return (int64_t)std::ceil((double)total_steps * warmup_ratio);
}

double LrSchedule::factor(int64_t step) const {
  const double t = (double)step;
  if (kind == ScheduleKind::Constant) return 1.0;
  if (step < warmup_steps) return t / std::max(1.0, (double)warmup_steps);
  if (kind == ScheduleKind::ConstantWithWarmup) return 1.0;
  const double span = (double)std::max<int64_t>(1, total_steps - warmup_steps);
  if (kind == ScheduleKind::Linear) return std::max(0.0, (double)(total_steps - step) / span);
  const double progress = (double)(step - warmup_steps) / span;
  return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * num_cycles * 2.0 * progress)));
}

}  // namespace qtune
