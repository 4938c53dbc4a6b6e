// Trainer checkpoints: out/checkpoint-N holds the PEFT adapter folder (adapter_config.json +
// adapter_model.safetensors, of any trained peft_type), the session's extra state (prompt types:
// peft_state.safetensors with every trained tensor, P-tuning's encoder included), optimizer.safetensors and
// trainer_state.json (global step, data position, RNG counters, seed, log history). Written into a temporary
// folder and renamed, so a kill leaves either the previous state or the complete new one.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace qtune {

class PeftSession;
class Optimizer;

struct LogRow {
  int64_t step = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0;
  double eval_loss = -1;  // < 0: not evaluated at this step
};

struct TrainerState {
  int64_t global_step = 0;
  int64_t micro_batches_done = 0;  // data position: micro-batches consumed so far (also the dropout counter)
  uint64_t seed = 0;
  int64_t total_steps = 0;
  std::vector<LogRow> history;
};

void save_checkpoint(const std::string& out_dir, const PeftSession& peft, const Optimizer& opt,
                     const TrainerState& st);
// The same with optimizer.safetensors written by write_optimizer(path) (a sharded optimizer's merged
// states: dist/sharded_optimizer.h).
void save_checkpoint(const std::string& out_dir, const PeftSession& peft,
                     const std::function<void(const std::string&)>& write_optimizer, const TrainerState& st);
// The newest out_dir/checkpoint-N, or "" when none.
std::string latest_checkpoint(const std::string& out_dir);
TrainerState read_trainer_state(const std::string& checkpoint_dir);

}  // namespace qtune
