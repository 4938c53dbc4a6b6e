// Trainer progress bar and log files (see progress.h).
#include "train/progress.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "core/allocator.h"
#include "core/error.h"
#include "io/json_util.h"
#include "train/loss_plot.h"

namespace qtune {
namespace {

double proc_status_mib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string k = key;
  while (std::getline(f, line))
    if (line.compare(0, k.size(), k) == 0) return std::atof(line.c_str() + k.size()) / 1024.0;
  return 0;
}

std::string hms(double s) {
  if (!(s >= 0) || s > 1e7) return "--:--";
  char buf[32];
  const int64_t t = (int64_t)s;
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", (long)(t / 3600), (long)(t / 60 % 60), (long)(t % 60));
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", (long)(t / 60), (long)(t % 60));
  return buf;
}

}  // namespace

double resident_mib() {
  return proc_status_mib("VmRSS:");
}
double peak_resident_mib() {
  return proc_status_mib("VmHWM:");
}

std::string gpu_peak_mib_text() {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.0f MiB", device_memory_stats().peak_in_use / 1048576.0);
  return buf;
}

std::string ProgressBar::memory() const {
  char buf[80];
  if (dev_ == Device::CPU) {
    std::snprintf(buf, sizeof buf, "mem %.0f MiB", resident_mib());
  } else {
    DeviceMemoryStats m = device_memory_stats();
    std::snprintf(buf, sizeof buf, "gpu %.0f MiB (peak %.0f)", m.in_use / 1048576.0, m.peak_in_use / 1048576.0);
  }
  return buf;
}

ProgressBar::ProgressBar(int64_t total_steps, int64_t first_step, bool enabled, Device dev)
    : total_(total_steps),
      first_(first_step),
      enabled_(enabled),
      tty_(isatty(2) != 0),
      dev_(dev),
      start_(std::chrono::steady_clock::now()) {}

void ProgressBar::update(const LogRow& r) {
  if (!enabled_ || !tty_) return;
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done = r.step - first_;
  const double eta = done > 0 ? el / done * (total_ - r.step) : -1;
  const int width = 24;
  const int fill = total_ > 0 ? (int)(width * r.step / total_) : 0;
  std::string bar(fill, '#');
  bar += std::string(width - fill, '.');
  std::fprintf(stderr, "\r[%s] %ld/%ld loss %.4f lr %.2e %.0f tok/s %s ETA %s   ", bar.c_str(), (long)r.step,
               (long)total_, r.loss, r.lr, r.tokens_per_s, memory().c_str(), hms(eta).c_str());
  std::fflush(stderr);
  drawn_ = true;
}

std::string ProgressBar::status(const LogRow& r) const {
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done = r.step - first_;
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s  ETA %s", memory().c_str(),
                hms(done > 0 ? el / done * (total_ - r.step) : -1).c_str());
  return buf;
}

void ProgressBar::line(const std::string& s) {
  if (!enabled_) return;
  if (drawn_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s\n", s.c_str());
  drawn_ = false;
}

void ProgressBar::finish() {
  if (enabled_ && drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

void write_training_log(const std::string& out_dir, const std::vector<LogRow>& history) {
  const std::string csv = path_join(out_dir, "training_log.csv");
  {
    std::ofstream f(csv + ".tmp");
    f << "step,loss,lr,grad_norm,tokens_per_s,eval_loss\n";
    char buf[256];
    for (const LogRow& r : history) {
      std::snprintf(buf, sizeof buf, "%ld,%.6f,%.6e,%.6f,%.1f,", (long)r.step, r.loss, r.lr, r.grad_norm,
                    r.tokens_per_s);
      f << buf;
      if (r.eval_loss >= 0) {
        std::snprintf(buf, sizeof buf, "%.6f", r.eval_loss);
        f << buf;
      }
      f << "\n";
    }
    if (!f) throw_error(ErrorKind::Io, "cannot write ", csv);
  }
  if (std::rename((csv + ".tmp").c_str(), csv.c_str()) != 0) throw_error(ErrorKind::Io, "cannot write ", csv);
  PlotSeries train{{}, {}, 31, 119, 180}, eval{{}, {}, 214, 39, 40};
  for (const LogRow& r : history) {
    train.x.push_back((double)r.step);
    train.y.push_back(r.loss);
    if (r.eval_loss >= 0) {
      eval.x.push_back((double)r.step);
      eval.y.push_back(r.eval_loss);
    }
  }
  write_loss_png(path_join(out_dir, "loss_curve.png"), {train, eval});
}

}  // namespace qtune
