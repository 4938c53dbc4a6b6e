// allreduce_grads (see data_parallel.h): greedy buckets in parameter order; a tensor larger than a bucket
// is reduced on its own, in place (no copy).
#include "dist/data_parallel.h"

#include <algorithm>

#include "core/error.h"

namespace qtune {

int allreduce_grads(Communicator& comm, const std::vector<ParamRef>& refs, ReduceOp op,
                    int64_t bucket_bytes) {
  if (dynamic_cast<LocalCommunicator*>(&comm)) return 0;  // one process: nothing to do
  const Device dev = comm.device();
  const int64_t cap = std::max<int64_t>(1, bucket_bytes / 4);  // F32 elements per bucket
  for (const ParamRef& p : refs)
    if (p.grad.dtype() != DType::F32 || p.grad.device() != dev)
      throw_error(ErrorKind::Unsupported, "allreduce_grads: gradient of ", p.name, " is ", p.grad.describe(),
                  "; expected F32 on the communicator's device");
  int64_t small = 0;  // elements of the tensors that go through buckets
  for (const ParamRef& p : refs)
    if (p.grad.numel() < cap) small += p.grad.numel();
  Tensor flat;  // [min(cap, small)] F32, made on first use
  std::vector<const ParamRef*> pending;
  int64_t used = 0;
  int calls = 0;
  auto flush = [&]() {
    if (pending.empty()) return;
    Tensor view = flat.slice0(0, used);  // [used]
    int64_t off = 0;
    for (const ParamRef* p : pending) {
      flat.slice0(off, p->grad.numel()).copy_from(p->grad);
      off += p->grad.numel();
    }
    comm.all_reduce(view, op);
    ++calls;
    off = 0;
    for (const ParamRef* p : pending) {
      Tensor g = p->grad;
      g.copy_from(flat.slice0(off, p->grad.numel()));
      off += p->grad.numel();
    }
    pending.clear();
    used = 0;
  };
  for (const ParamRef& p : refs) {
    const int64_t n = p.grad.numel();
    if (n >= cap) {  // its own collective, in place
      Tensor g = p.grad;
      comm.all_reduce(g, op);
      ++calls;
      continue;
    }
    if (used + n > cap) flush();
    if (!flat.defined()) flat = Tensor::empty({std::min(cap, small)}, DType::F32, dev);
    pending.push_back(&p);
    used += n;
  }
  flush();
  return calls;
}

int allreduce_grads(Communicator& comm, const TrainableParams& params, ReduceOp op, int64_t bucket_bytes) {
  std::vector<ParamRef> refs;
  for (const auto& e : params.entries()) refs.push_back({e.name, e.param, e.grad});
  return allreduce_grads(comm, refs, op, bucket_bytes);
}

}  // namespace qtune
