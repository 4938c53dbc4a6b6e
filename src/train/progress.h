// Trainer output: the live progress bar on stderr (step/total, loss, lr, tokens/s, resident memory, ETA)
// and the files in the output folder: training_log.csv (step, loss, lr, grad_norm, tokens_per_s,
// eval_loss) and loss_curve.png (train loss per step, eval loss at each evaluation).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "train/checkpoint.h"

namespace qtune {

class ProgressBar {
 public:
  // dev: where training runs; on the GPU the memory shown is the device memory in use (and its peak).
  ProgressBar(int64_t total_steps, int64_t first_step, bool enabled, Device dev = Device::CPU);
  // Redraws the bar (a terminal: one line rewritten with \r; otherwise nothing).
  void update(const LogRow& r);
  // A permanent line (logging steps, eval results), printed above the bar.
  void line(const std::string& s);
  // "mem 180 MiB  ETA 00:42" after step r.step.
  std::string status(const LogRow& r) const;
  void finish();

 private:
  std::string memory() const;  // "mem 180 MiB" or "gpu 6120 MiB (peak 7900)"
  int64_t total_, first_;
  bool enabled_, tty_;
  Device dev_;
  std::chrono::steady_clock::time_point start_;
  bool drawn_ = false;
};

// Resident and peak resident memory of this process in MiB (0 where /proc is unavailable).
double resident_mib();
double peak_resident_mib();
// Peak device memory handed out by the caching allocator, as "7900 MiB".
std::string gpu_peak_mib_text();

void write_training_log(const std::string& out_dir, const std::vector<LogRow>& history);

}  // namespace qtune
