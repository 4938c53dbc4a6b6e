// Learning-rate schedules as transformers' get_scheduler builds them (LambdaLR: lr = base_lr · factor):
//   constant               1
//   constant_with_warmup   t/max(1,w) while t < w, then 1
//   linear                 t/max(1,w) while t < w, then max(0, (T-t)/max(1, T-w))
//   cosine                 t/max(1,w) while t < w, then max(0, ½(1 + cos(π·2·cycles·progress))),
//                          progress = (t-w)/max(1, T-w), cycles = 0.5
// t is the number of optimizer steps already taken (the lr of the first step is lr(0)). Warmup given as a
// ratio becomes ceil(ratio · T) steps, as TrainingArguments.get_warmup_steps computes it.
#pragma once
#include <cstdint>
#include <string>

namespace qtune {

enum class ScheduleKind { Constant, ConstantWithWarmup, Linear, Cosine };
ScheduleKind schedule_kind_from_name(const std::string& name);  // transformers' names; throws Usage
const char* schedule_kind_name(ScheduleKind k);

// transformers: warmup_steps ≥ 1 → int(warmup_steps); otherwise ceil(total · warmup_ratio).
int64_t warmup_steps_from_ratio(double warmup_ratio, int64_t total_steps);

struct LrSchedule {
  ScheduleKind kind = ScheduleKind::Linear;
  double base_lr = 5e-5;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;
  double num_cycles = 0.5;  // cosine
  double factor(int64_t step) const;
  double lr(int64_t step) const { return base_lr * factor(step); }
};

}  // namespace qtune
