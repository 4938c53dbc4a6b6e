// Optimizer states sharded across data-parallel ranks (`--fsdp`): every trainable tensor is owned by one
// rank, which alone keeps its optimizer states and steps it; the others receive the new values.
//
// Per step: gradients are all-reduced as in plain data parallelism (every rank needs them all for the
// global norm that clipping uses, so all-reduce rather than reduce-scatter), each rank steps an Optimizer
// built over its own tensors only, then broadcast_from_owners sends every tensor's new value from its
// owner (one broadcast per rank: its tensors packed together). The values are exactly those of an
// unsharded run (the owner computes the same update).
//
// Checkpoints hold one optimizer.safetensors, the same file an unsharded run writes: each rank serialises
// its part, the parts travel to rank 0 (gather_optimizer_parts) and rank 0 merges them
// (write_merged_optimizer). On resume each rank loads the states of the tensors it owns from that file
// (load_owned_optimizer), so a checkpoint resumes under any world size, sharded or not.
//
//   std::vector<int> owner = assign_owners(refs, world);
//   Optimizer opt(cfg, group_by_weight_decay(owned(refs, owner, rank), wd));
//   ... all-reduce grads, clip over all refs, opt.step(lr);  broadcast_from_owners(comm, refs, owner);
#pragma once
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "optim/optimizer.h"

namespace qtune {

// owner[i] for refs[i]: largest tensors first, each onto the rank with the fewest elements so far (ties:
// the lower rank); the same on every rank.
std::vector<int> assign_owners(const std::vector<ParamRef>& refs, int world);
std::vector<ParamRef> owned(const std::vector<ParamRef>& refs, const std::vector<int>& owner, int rank);

// Every param gets its owner's value (params on comm's device, any dtype). Returns the collectives.
int broadcast_from_owners(Communicator& comm, const std::vector<ParamRef>& refs,
                          const std::vector<int>& owner);

// Collective: every rank's optimizer serialised (a safetensors file's bytes); the parts on rank 0, in rank
// order (empty elsewhere).
std::vector<std::string> gather_optimizer_parts(Communicator& comm, const Optimizer& opt);
// Rank 0: one optimizer.safetensors from the parts (tensors and per-parameter steps united).
void write_merged_optimizer(const std::vector<std::string>& parts, const std::string& path);
// The states of opt's parameters from a (full) optimizer file; other parameters' states are skipped.
void load_owned_optimizer(Optimizer& opt, const std::string& path);

}  // namespace qtune
