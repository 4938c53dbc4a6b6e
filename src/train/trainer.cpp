// The SFT trainer loop (see trainer.h). Data parallel when WORLD_SIZE > 1 (docs/distributed.md): rank r
// of N takes micro-batches r, r+N, ... of each step's N x gradient_accumulation_steps, the step's target
// count and gradients are summed over the ranks before clipping, and only rank 0 logs and saves. The
// per-rank differences (gradient all-reduce overlapped with the backward, --fsdp sharding of the base
// weights and optimizer states) live in dist/dist_training.h.
#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/allocator.h"
#include "core/error.h"
#include "core/profile.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "dist/dist_training.h"
#include "io/json_util.h"
#include "model/llama_model.h"
#include "optim/clip.h"
#include "optim/optimizer.h"
#include "optim/param_groups.h"
#include "optim/schedule.h"
#include "tokenizer/tokenizer.h"
#include "train/causal_lm.h"
#include "train/checkpoint.h"
#include "train/collate.h"
#include "train/dataset.h"
#include "train/peft_session.h"
#include "train/progress.h"

namespace qtune {
namespace {

uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Fisher-Yates with a splitmix64 stream: the same order on every platform.
void shuffle(std::vector<int64_t>& v, uint64_t seed) {
  uint64_t s = mix64(seed);
  for (size_t i = v.size(); i > 1; --i) {
    s = mix64(s);
    std::swap(v[i - 1], v[s % i]);
  }
}

// The stream of micro-batches: epoch e visits the train split in shuffle(seed, e) order, in rows of
// make_rows(), batch_size rows per micro-batch. Position k (micro-batches consumed) is all it needs.
class DataStream {
 public:
  DataStream(const std::vector<SftExample>& ex, std::vector<int64_t> train_idx, const TrainerArgs& a)
      : ex_(ex), idx_(std::move(train_idx)), a_(a) {
    load_epoch(0);
  }
  int64_t micro_per_epoch0() const { return per_epoch_; }
  MicroBatch at(int64_t k) {  // k-th micro-batch of the whole run
    while (k >= epoch_start_ + per_epoch_) {
      epoch_start_ += per_epoch_;
      load_epoch(epoch_ + 1);
    }
    while (k < epoch_start_) {  // only after a resume into an earlier epoch: recompute from the start
      epoch_start_ = 0;
      load_epoch(0);
    }
    const size_t first = (size_t)(k - epoch_start_) * a_.per_device_train_batch_size;
    const size_t count = std::min<size_t>(a_.per_device_train_batch_size, rows_.size() - first);
    return collate(ex_, rows_, first, count, pad_);
  }
  void set_pad(int32_t p) { pad_ = p; }

 private:
  void load_epoch(int64_t e) {
    epoch_ = e;
    std::vector<int64_t> order = idx_;
    shuffle(order, a_.seed * 1000003ull + (uint64_t)e + 1);
    rows_ = make_rows(ex_, order, a_.packing, a_.max_seq_length);
    per_epoch_ =
        ((int64_t)rows_.size() + a_.per_device_train_batch_size - 1) / a_.per_device_train_batch_size;
  }
  const std::vector<SftExample>& ex_;
  std::vector<int64_t> idx_;
  const TrainerArgs& a_;
  std::vector<std::vector<int64_t>> rows_;
  int64_t epoch_ = 0, epoch_start_ = 0, per_epoch_ = 0;
  int32_t pad_ = 0;
};

Device training_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name != "cuda" && name != "auto")
    throw_error(ErrorKind::Usage, "--device ", name, ": expected cpu, cuda or auto");
  if (cuda_available()) return Device::CUDA;
  if (name == "cuda") throw_error(ErrorKind::Unsupported, "--device cuda: no usable GPU (run `qtune env`)");
  return Device::CPU;
}

void check_args(const TrainerArgs& a) {
  if (a.model_dir.empty() || a.data_path.empty() || a.out_dir.empty())
    throw_error(ErrorKind::Usage, "finetune needs --model, --data and --out");
  if (a.per_device_train_batch_size < 1)
    throw_error(ErrorKind::Usage, "--per-device-train-batch-size must be >= 1");
  if (a.gradient_accumulation_steps < 1)
    throw_error(ErrorKind::Usage, "--gradient-accumulation-steps must be >= 1");
  if (!(a.learning_rate >= 0)) throw_error(ErrorKind::Usage, "--learning-rate must be >= 0");
  if (a.max_steps <= 0 && !(a.num_train_epochs > 0))
    throw_error(ErrorKind::Usage, "--num-train-epochs must be > 0 (or give --max-steps)");
  if (!(a.eval_split >= 0 && a.eval_split < 1))
    throw_error(ErrorKind::Usage, "--eval-split must be in [0, 1)");
  if (!(a.warmup_ratio >= 0 && a.warmup_ratio <= 1))
    throw_error(ErrorKind::Usage, "--warmup-ratio must be in [0, 1]");
  if (a.logging_steps < 1) throw_error(ErrorKind::Usage, "--logging-steps must be >= 1");
}

}  // namespace

TrainResult run_finetune(const TrainerArgs& a) {
  check_args(a);
  const PeftKind kind = training_peft_kind(a);
  check_peft_args(a, kind);
  OptimizerConfig ocfg;
  try {
    ocfg = optimizer_config_from_name(a.optim);
  } catch (const Error& e) {
    throw_error(ErrorKind::Usage, "--optim ", a.optim, ": ", e.what());
  }
  const DistConfig dcfg = dist_config_from_env();
  if (dcfg.distributed()) bind_local_device(dcfg.local_rank);
  const bool say = !a.quiet && dcfg.rank == 0;
  auto note = [&](const std::string& s) {
    if (say) std::fprintf(stderr, "%s\n", s.c_str());
  };
  const Device dev = training_device(a.device);
  std::unique_ptr<DistContext> dist = init_distributed(dcfg, dev, dist_options_from_env());
  const int64_t world = dcfg.world_size;
  const bool main_rank = dist->is_main();
  if (ocfg.paged && dev == Device::CPU)
    note("note: " + a.optim + " keeps its states in host memory anyway on the CPU: using " +
         a.optim.substr(6));

  // Data first: bad rows fail before the model loads.
  auto tok = Tokenizer::load(a.model_dir);
  const std::string bos = tok->bos_id() >= 0 ? tok->id_to_token(tok->bos_id()) : "";
  const std::string eos = tok->eos_id() >= 0 ? tok->id_to_token(tok->eos_id()) : "";
  std::vector<SftRow> rows = read_sft_rows(a.data_path, tok->chat_template(), bos, eos);
  int64_t truncated = 0, dropped = 0;
  std::vector<SftExample> ex =
      tokenize_rows(rows, *tok, {a.completion_only_loss, a.max_seq_length}, &truncated, &dropped);
  if (truncated)
    note("warning: " + std::to_string(truncated) + " of " + std::to_string(rows.size()) +
         " examples are longer than --max-seq-length " + std::to_string(a.max_seq_length) +
         " and were truncated");
  if (dropped)
    note("warning: " + std::to_string(dropped) + " examples have no trained tokens and were dropped");
  if (ex.empty()) throw_error(ErrorKind::Format, a.data_path, ": no example has a trained token");
  std::vector<int64_t> all(ex.size());
  for (size_t i = 0; i < ex.size(); ++i) all[i] = (int64_t)i;
  shuffle(all, a.seed);
  int64_t n_eval = a.eval_split > 0 ? (int64_t)std::ceil(a.eval_split * (double)ex.size()) : 0;
  if (n_eval >= (int64_t)ex.size()) n_eval = (int64_t)ex.size() - 1;
  std::vector<int64_t> eval_idx(all.end() - n_eval, all.end()), train_idx(all.begin(), all.end() - n_eval);
  std::sort(train_idx.begin(), train_idx.end());
  const int32_t pad = tok->pad_id() >= 0 ? tok->pad_id() : tok->eos_id();
  // PEFT trains the last virtual token to predict a row's first token when that token is a target.
  bool first_token_is_target = true;
  size_t longest = 0;
  for (const SftExample& e : ex) {
    first_token_is_target = first_token_is_target && !e.labels.empty() && e.labels[0] != -100;
    longest = std::max(longest, e.ids.size());
  }

  // Model + adapter.
  LlamaModel model = LlamaModel::load(a.model_dir, dev, a.load);
  std::string resume_dir;
  TrainerState st;
  if (a.resume) {
    resume_dir = latest_checkpoint(a.out_dir);
    if (resume_dir.empty()) throw_error(ErrorKind::Usage, "--resume: no checkpoint-N folder in ", a.out_dir);
    st = read_trainer_state(resume_dir);
    if (st.seed != a.seed)
      throw_error(ErrorKind::Usage, "--resume: ", resume_dir, " was trained with --seed ", st.seed, ", not ",
                  a.seed);
  }
  std::unique_ptr<PeftSession> peft;
  if (!resume_dir.empty())
    peft = load_peft_session(model, resume_dir, kind, a, *tok, /*checkpoint=*/true);
  else if (!a.adapter_dir.empty())
    peft = load_peft_session(model, a.adapter_dir, kind, a, *tok, /*checkpoint=*/false);
  else
    peft = create_peft_session(model, a, *tok);
  const int64_t ctx = model.config().max_position_embeddings;
  if (peft->virtual_tokens() > 0 && (int64_t)longest + peft->virtual_tokens() > ctx)
    throw_error(ErrorKind::Usage, "examples of up to ", longest, " tokens after ", peft->virtual_tokens(),
                " virtual tokens exceed the model's context (max_position_embeddings ", ctx,
                "); lower --max-seq-length or --num-virtual-tokens");
  TrainableParams& params = peft->params();
  std::vector<ParamRef> refs;
  for (const auto& e : params.entries()) refs.push_back({e.name, e.param, e.grad});
  if (a.fsdp)
    for (const ParamRef& r : refs)
      if (r.name.find("lora_magnitude_vector") != std::string::npos)
        throw_error(ErrorKind::Usage, "--fsdp with DoRA: DoRA reads every full base weight after each step");
  DistTraining dt(*dist, model, params, refs, {a.fsdp, a.overlap_grad_reduce});
  if (a.fsdp && dev == Device::CUDA) device_reset_peak();  // the GPU peak below: since sharding
  if (FsdpShards* f = dt.fsdp()) {
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "fsdp: %.1f MiB of base weights over %ld ranks: %.1f MiB resident per rank + %.1f MiB of "
                  "gather buffers",
                  f->full_bytes() / 1048576.0, (long)world, f->shard_bytes() / 1048576.0,
                  f->buffer_bytes() / 1048576.0);
    note(buf);
  }
  if (ocfg.paged && dev == Device::CUDA) {
    // bitsandbytes' paged states are unified memory that stays on the GPU until it runs short; here they
    // stay on the GPU when they take at most 1/8 of its free memory, else stream from pinned host memory.
    // Both give the same numbers bit for bit (optim/optimizer.h); only speed and memory differ.
    int64_t n = 0;
    for (const ParamRef& r : dt.optimizer_refs()) n += r.param.numel();
    const int64_t bytes = n * (a.optim.find("8bit") != std::string::npos ? 2 : 8) + (n >> 6);
    const int64_t headroom = (int64_t)device_memory_capacity() - (int64_t)device_memory_stats().in_use;
    if (bytes <= headroom / 8) {
      ocfg.paged = false;
      note(
          "note: " + a.optim + ": its " + std::to_string(bytes >> 20) +
          " MiB of states fit on the GPU and stay there (paged: streamed from host memory when they do not)");
    }
  }
  Optimizer opt(ocfg, group_by_weight_decay(dt.optimizer_refs(), a.weight_decay));
  std::vector<ParamGroup> all_groups = group_by_weight_decay(refs, a.weight_decay);  // clipping: every grad
  if (!resume_dir.empty()) dt.load_optimizer(opt, path_join(resume_dir, "optimizer.safetensors"));

  DataStream stream(ex, train_idx, a);
  stream.set_pad(pad);
  int64_t total = a.max_steps;
  if (total <= 0)
    total = std::max<int64_t>(1, (int64_t)std::ceil(a.num_train_epochs * (double)stream.micro_per_epoch0() /
                                                    (double)(a.gradient_accumulation_steps * world)));
  LrSchedule sched;
  sched.kind = schedule_kind_from_name(a.lr_scheduler_type);
  sched.base_lr = a.learning_rate;
  sched.total_steps = total;
  sched.warmup_steps = warmup_steps_from_ratio(a.warmup_ratio, total);
  st.seed = a.seed;
  st.total_steps = total;
  if (!resume_dir.empty() && st.global_step > total)
    throw_error(ErrorKind::Usage, "--resume: ", resume_dir, " is past the run's ", total, " steps");

  std::filesystem::create_directories(a.out_dir);
  note("finetune: " + std::to_string(train_idx.size()) + " train / " + std::to_string(eval_idx.size()) +
       " eval examples, " + std::to_string(total) + " steps, " + peft->describe() + ", " +
       std::to_string(params.numel()) + " trainable parameters" +
       (resume_dir.empty() ? "" : ", resuming from " + resume_dir));

  StepOptions so;
  so.gradient_checkpointing =
      a.gradient_checkpointing < 0 ? dev != Device::CPU : a.gradient_checkpointing != 0;
  so.offload_activations = a.offload_activations;
  if (a.offload_activations && (dev == Device::CPU || !so.gradient_checkpointing))
    throw_error(ErrorKind::Usage, "--offload-activations needs --device cuda and gradient checkpointing");
  auto evaluate = [&]() {
    peft->set_training(false);
    std::vector<int64_t> order = eval_idx;
    auto erows = make_rows(ex, order, a.packing, a.max_seq_length);
    double sum = 0;
    int64_t cnt = 0;
    for (size_t r = 0; r < erows.size(); r += a.per_device_train_batch_size) {
      MicroBatch mb =
          collate(ex, erows, r, std::min<size_t>(a.per_device_train_batch_size, erows.size() - r), pad);
      PeftBatch b = peft->prepare(mb, first_token_is_target);
      StepOptions eo;
      eo.block_hooks = dt.eval_hooks();
      b.apply(eo);
      LossSum l = causal_lm_forward_backward(model, b.ids(), b.labels(), nullptr, eo);
      sum += l.loss;
      cnt += l.count;
    }
    peft->set_training(true);
    return cnt ? sum / (double)cnt : 0.0;
  };

  TrainResult res;
  for (const LogRow& r : st.history) res.losses.push_back(r.loss);
  if (FsdpShards* f = dt.fsdp()) {
    res.fsdp_full_bytes = f->full_bytes();
    res.fsdp_shard_bytes = f->shard_bytes();
    res.fsdp_buffer_bytes = f->buffer_bytes();
  }
  ProgressBar bar(total, st.global_step, say, dev);
  profile_start(dev);
  const int64_t profile_first_step = st.global_step + 1;
  peft->set_training(true);
  int64_t run_tokens = 0;
  const auto t_run = std::chrono::steady_clock::now();
  while (st.global_step < total) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<MicroBatch> mbs;
    std::vector<PeftBatch> batches;
    int64_t targets = 0, tokens = 0;
    for (int64_t g = 0; g < a.gradient_accumulation_steps; ++g) {  // this rank's share of the step
      mbs.push_back(stream.at(st.micro_batches_done + g * world + dcfg.rank));
      tokens += mbs.back().tokens;
    }
    for (const MicroBatch& mb : mbs) {  // after the loop above: mbs no longer moves
      batches.push_back(peft->prepare(mb, first_token_is_target));
      targets += batches.back().targets;
    }
    if (world > 1) {  // every rank normalises by the step's global target count
      QT_PROFILE("allreduce_count");
      targets = (int64_t)dist->comm->all_reduce_scalar((double)targets, ReduceOp::Sum);
    }
    {
      QT_PROFILE("zero_grad");
      params.zero_grads();
    }
    double loss_sum = 0;
    for (int64_t g = 0; g < (int64_t)mbs.size(); ++g) {
      peft->set_step((uint64_t)(st.micro_batches_done + g * world + dcfg.rank));
      batches[g].apply(so);
      so.grad_scale = targets ? 1.0f / (float)targets : 0.0f;
      so.block_hooks = dt.hooks(g + 1 == (int64_t)mbs.size());
      loss_sum += causal_lm_forward_backward(model, batches[g].ids(), batches[g].labels(), &params, so).loss;
      peft->after_backward(batches[g]);
    }
    st.micro_batches_done += (int64_t)mbs.size() * world;
    if (world > 1) {  // Σ over ranks of Σ_local / global count = the one-rank gradient (data_parallel.h)
      QT_PROFILE("allreduce_grads");
      dt.reduce_grads();
      loss_sum = dist->comm->all_reduce_scalar(loss_sum, ReduceOp::Sum);
      tokens = (int64_t)dist->comm->all_reduce_scalar((double)tokens, ReduceOp::Sum);
    }
    float gnorm;
    {
      QT_PROFILE("clip_grad_norm");
      gnorm =
          a.max_grad_norm > 0 ? clip_grad_norm(all_groups, a.max_grad_norm) : grad_global_norm(all_groups);
    }
    const double lr = sched.lr(st.global_step);
    {
      QT_PROFILE("optimizer");
      opt.step(lr);
      dt.after_step();
    }
    peft->refresh();
    ++st.global_step;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    run_tokens += tokens;
    LogRow row{st.global_step,
               targets ? loss_sum / (double)targets : 0.0,
               lr,
               gnorm,
               tokens / std::max(secs, 1e-9),
               -1};
    const bool last = st.global_step == total;
    if (!eval_idx.empty() && ((a.eval_steps > 0 && st.global_step % a.eval_steps == 0) || last)) {
      row.eval_loss = evaluate();
      res.eval_losses.push_back(row.eval_loss);
    }
    if (profiling() && st.global_step == profile_first_step && st.global_step < total)
      profile_start(dev);  // the table covers the steady state: drop the first step (allocations, tuning)
    st.history.push_back(row);
    res.losses.push_back(row.loss);
    bar.update(row);
    if (st.global_step % a.logging_steps == 0 || last || row.eval_loss >= 0) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "step %ld/%ld  loss %.4f  lr %.3e  grad_norm %.3f  %.0f tok/s",
                    (long)st.global_step, (long)total, row.loss, lr, gnorm, row.tokens_per_s);
      std::string s = buf + ("  " + bar.status(row));
      if (row.eval_loss >= 0) {
        std::snprintf(buf, sizeof buf, "  eval_loss %.4f", row.eval_loss);
        s += buf;
      }
      bar.line(s);
      if (main_rank) write_training_log(a.out_dir, st.history);
    }
    if (a.save_steps > 0 && st.global_step % a.save_steps == 0 && !last) {
      auto write_optimizer = dt.optimizer_writer(opt);  // collective when the states are sharded
      if (main_rank) {
        peft->sync_to_host();
        save_checkpoint(a.out_dir, *peft, write_optimizer, st);
      }
    }
    if (a.stop_after_steps > 0 && st.global_step == a.stop_after_steps && !last) {
      bar.finish();
      res.stopped_early = true;
      res.steps = st.global_step;
      dist->finish();
      return res;
    }
  }
  bar.finish();
  if (profiling() && main_rank) std::fprintf(stderr, "%s", profile_report().c_str());
  const double run_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count();
  res.tokens_per_s = run_tokens / std::max(run_secs, 1e-9);
  res.steps = st.global_step;
  if (main_rank) {
    write_training_log(a.out_dir, st.history);
    peft->sync_to_host();
    peft->save(a.out_dir);
  }
  if (a.on_trained) {
    dt.unshard();
    peft->set_training(false);
    a.on_trained(model, *peft);
  }
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "done: %ld steps, loss %.4f -> %.4f, %.0f tokens/s, peak memory %.0f MiB%s; %s in %s",
                (long)res.steps, res.losses.empty() ? 0.0 : res.losses.front(),
                res.losses.empty() ? 0.0 : res.losses.back(), res.tokens_per_s, peak_resident_mib(),
                dev == Device::CPU ? "" : (" (GPU peak " + gpu_peak_mib_text() + ")").c_str(),
                kind == PeftKind::Full ? "model" : "adapter", a.out_dir.c_str());
  note(buf);
  dist->finish();
  return res;
}

}  // namespace qtune
