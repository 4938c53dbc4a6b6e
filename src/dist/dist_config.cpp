// DistConfig from the environment and launch plans (see dist_config.h).
#include "dist/dist_config.h"

#include <cstdlib>

#include "core/error.h"

namespace qtune {
namespace {

bool lookup(const std::map<std::string, std::string>* env, const char* name, std::string* out) {
  if (env) {
    auto it = env->find(name);
    if (it == env->end()) return false;
    *out = it->second;
    return true;
  }
  const char* v = std::getenv(name);
  if (!v) return false;
  *out = v;
  return true;
}

int parse_int(const char* name, const std::string& s) {
  char* end = nullptr;
  const long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < 0 || v > 1000000)
    throw_error(ErrorKind::Usage, "environment variable ", name, "='", s,
                "': expected a non-negative integer");
  return (int)v;
}

}  // namespace

DistConfig dist_config_from_env(const std::map<std::string, std::string>* env) {
  DistConfig c;
  std::string v;
  if (lookup(env, "WORLD_SIZE", &v)) c.world_size = parse_int("WORLD_SIZE", v);
  if (lookup(env, "RANK", &v)) c.rank = parse_int("RANK", v);
  c.local_rank = c.rank;
  if (lookup(env, "LOCAL_RANK", &v)) c.local_rank = parse_int("LOCAL_RANK", v);
  if (lookup(env, "MASTER_ADDR", &v) && !v.empty()) c.master_addr = v;
  if (lookup(env, "MASTER_PORT", &v)) c.master_port = parse_int("MASTER_PORT", v);
  if (c.world_size < 1) throw_error(ErrorKind::Usage, "WORLD_SIZE must be >= 1");
  if (c.rank >= c.world_size)
    throw_error(ErrorKind::Usage, "RANK=", c.rank, " is outside WORLD_SIZE=", c.world_size);
  if (c.local_rank >= c.world_size)
    throw_error(ErrorKind::Usage, "LOCAL_RANK=", c.local_rank, " is outside WORLD_SIZE=", c.world_size);
  if (c.master_port < 1 || c.master_port > 65535)
    throw_error(ErrorKind::Usage, "MASTER_PORT=", c.master_port, ": expected 1..65535");
  return c;
}

void check_launch_plan(const LaunchPlan& p) {
  if (p.nproc_per_node < 1) throw_error(ErrorKind::Usage, "--nproc-per-node must be >= 1");
  if (p.nnodes < 1) throw_error(ErrorKind::Usage, "--nnodes must be >= 1");
  if (p.node_rank < 0 || p.node_rank >= p.nnodes)
    throw_error(ErrorKind::Usage, "--node-rank ", p.node_rank, " is outside --nnodes ", p.nnodes);
  if (p.master_port < 1 || p.master_port > 65535)
    throw_error(ErrorKind::Usage, "--master-port ", p.master_port, ": expected 1..65535");
  if (p.master_addr.empty()) throw_error(ErrorKind::Usage, "--master-addr is empty");
}

DistConfig rank_config(const LaunchPlan& p, int local_rank) {
  DistConfig c;
  c.world_size = p.world_size();
  c.rank = p.node_rank * p.nproc_per_node + local_rank;
  c.local_rank = local_rank;
  c.master_addr = p.master_addr;
  c.master_port = p.master_port;
  return c;
}

std::map<std::string, std::string> dist_env(const DistConfig& c) {
  return {{"WORLD_SIZE", std::to_string(c.world_size)},   {"RANK", std::to_string(c.rank)},
          {"LOCAL_RANK", std::to_string(c.local_rank)},   {"MASTER_ADDR", c.master_addr},
          {"MASTER_PORT", std::to_string(c.master_port)}, {"NCCL_NVLS_ENABLE", "0"}};
}

}  // namespace qtune
