// Trainer checkpoints (see checkpoint.h).
#include "train/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_util.h"
#include "optim/optimizer.h"
#include "train/peft_session.h"

namespace qtune {

namespace fs = std::filesystem;
using nlohmann::json;

void save_checkpoint(const std::string& out_dir, const PeftSession& peft, const Optimizer& opt,
                     const TrainerState& st) {
  save_checkpoint(
      out_dir, peft, [&](const std::string& path) { opt.save(path); }, st);
}

void save_checkpoint(const std::string& out_dir, const PeftSession& peft,
                     const std::function<void(const std::string&)>& write_optimizer, const TrainerState& st) {
  const std::string name = "checkpoint-" + std::to_string(st.global_step);
  const fs::path tmp = fs::path(out_dir) / (".tmp-" + name), dst = fs::path(out_dir) / name;
  std::error_code ec;
  fs::remove_all(tmp, ec);
  peft.save(tmp.string());
  peft.save_state(tmp.string());
  write_optimizer((tmp / "optimizer.safetensors").string());
  json j;
  j["global_step"] = st.global_step;
  j["micro_batches_done"] = st.micro_batches_done;
  j["seed"] = st.seed;
  j["max_steps"] = st.total_steps;
  json hist = json::array();
  for (const LogRow& r : st.history) {
    json h = {{"step", r.step},
              {"loss", r.loss},
              {"learning_rate", r.lr},
              {"grad_norm", r.grad_norm},
              {"tokens_per_s", r.tokens_per_s}};
    if (r.eval_loss >= 0) h["eval_loss"] = r.eval_loss;
    hist.push_back(h);
  }
  j["log_history"] = hist;
  {
    std::ofstream f(tmp / "trainer_state.json");
    f << j.dump(2) << "\n";
    if (!f) throw_error(ErrorKind::Io, "cannot write ", (tmp / "trainer_state.json").string());
  }
  fs::remove_all(dst, ec);
  fs::rename(tmp, dst, ec);
  if (ec)
    throw_error(ErrorKind::Io, "cannot rename ", tmp.string(), " to ", dst.string(), ": ", ec.message());
}

std::string latest_checkpoint(const std::string& out_dir) {
  std::error_code ec;
  if (!fs::is_directory(out_dir, ec)) return "";
  int64_t best = -1;
  std::string path;
  for (const auto& e : fs::directory_iterator(out_dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("checkpoint-", 0) != 0 || !e.is_directory()) continue;
    const std::string num = n.substr(11);
    if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos) continue;
    if (!fs::exists(e.path() / "trainer_state.json")) continue;
    const int64_t s = std::stoll(num);
    if (s > best) best = s, path = e.path().string();
  }
  return path;
}

TrainerState read_trainer_state(const std::string& dir) {
  const std::string path = path_join(dir, "trainer_state.json");
  json j = parse_json_text(read_text_file(path, ErrorKind::Io), path, ErrorKind::Format);
  TrainerState st;
  try {
    st.global_step = j.at("global_step").get<int64_t>();
    st.micro_batches_done = j.at("micro_batches_done").get<int64_t>();
    st.seed = j.at("seed").get<uint64_t>();
    st.total_steps = j.at("max_steps").get<int64_t>();
    for (const json& h : j.at("log_history")) {
      LogRow r;
      r.step = h.at("step").get<int64_t>();
      r.loss = h.at("loss").get<double>();
      r.lr = h.at("learning_rate").get<double>();
      r.grad_norm = h.at("grad_norm").get<double>();
      r.tokens_per_s = h.at("tokens_per_s").get<double>();
      r.eval_loss = h.contains("eval_loss") ? h["eval_loss"].get<double>() : -1;
      st.history.push_back(r);
    }
  } catch (const json::exception& e) {
    throw_error(ErrorKind::Format, path, ": bad trainer state (", e.what(), ")");
  }
  return st;
}

}  // namespace qtune
