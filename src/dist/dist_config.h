// Where this process sits in a distributed run: world size, rank, local rank and the rendezvous address,
// read from torchrun's environment variables (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT,
// also set by our launcher and easy to set from Slurm) or planned from launcher flags
// (--nproc-per-node, --nnodes, --node-rank, --master-addr, --master-port).
//
//   DistConfig c = dist_config_from_env();     // world_size 1, rank 0 when nothing is set
//   LaunchPlan p{2, 1, 0, "127.0.0.1", 29500};  // 2 processes on this node
//   DistConfig r1 = rank_config(p, 1);          // what local process 1 gets: rank 1, local_rank 1
#pragma once
#include <map>
#include <string>

namespace qtune {

struct DistConfig {
  int world_size = 1;
  int rank = 0;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool distributed() const { return world_size > 1; }
};

// Launcher flags: nproc_per_node processes on each of nnodes nodes; this node is node_rank.
struct LaunchPlan {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  int world_size() const { return nproc_per_node * nnodes; }
};

// From the environment (getenv, or env when given, for tests). Throws ErrorKind::Usage naming the
// variable when a value is malformed or RANK/LOCAL_RANK is outside WORLD_SIZE.
DistConfig dist_config_from_env(const std::map<std::string, std::string>* env = nullptr);
// Checks a plan (positive counts, node_rank < nnodes, port in 1..65535); throws ErrorKind::Usage.
void check_launch_plan(const LaunchPlan& p);
// The config of local process local_rank under plan p.
DistConfig rank_config(const LaunchPlan& p, int local_rank);
// The environment variables that carry c to a child process.
std::map<std::string, std::string> dist_env(const DistConfig& c);

}  // namespace qtune
