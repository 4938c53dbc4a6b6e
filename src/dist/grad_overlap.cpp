// OverlappedGradReducer (see grad_overlap.h): per-block buckets built once, started from the backward
// hooks, unpacked in finish().
#include "dist/grad_overlap.h"

#include <algorithm>
#include <cctype>

#include "core/error.h"

namespace qtune {

int layer_of_param(const std::string& name) {
  for (size_t at = name.find("layers."); at != std::string::npos; at = name.find("layers.", at + 1)) {
    if (at > 0 && name[at - 1] != '.') continue;
    size_t i = at + 7, j = i;
    while (j < name.size() && std::isdigit((unsigned char)name[j])) ++j;
    if (j > i && j < name.size() && name[j] == '.') return std::stoi(name.substr(i, j - i));
  }
  return -1;
}

OverlappedGradReducer::OverlappedGradReducer(Communicator& comm, const std::vector<ParamRef>& refs,
                                             int num_layers, int64_t bucket_bytes)
    : comm_(comm), bucket_bytes_(bucket_bytes), layer_buckets_(num_layers), done_(num_layers, 0) {
  const int64_t cap = std::max<int64_t>(1, bucket_bytes / 4);  // F32 elements per bucket
  std::vector<int64_t> used(num_layers, 0);
  for (const ParamRef& p : refs) {
    if (p.grad.dtype() != DType::F32 || p.grad.device() != comm.device())
      throw_error(ErrorKind::Unsupported, "gradient all-reduce: gradient of ", p.name, " is ",
                  p.grad.describe(), "; expected F32 on the communicator's device");
    const int l = layer_of_param(p.name);
    if (l < 0 || l >= num_layers) {
      rest_.push_back(p);
      continue;
    }
    std::vector<Bucket>& bs = layer_buckets_[l];
    const int64_t n = p.grad.numel();
    if (n >= cap) {  // alone, in place
      bs.push_back({{p}, Tensor()});
      continue;
    }
    // The block's current packed bucket is the last one that has a flat buffer planned (flat defined
    // later); a new one when this tensor would overflow it.
    if (bs.empty() || bs.back().refs.size() == 1 && bs.back().refs[0].grad.numel() >= cap ||
        used[l] + n > cap) {
      bs.push_back({{}, Tensor()});
      used[l] = 0;
    }
    bs.back().refs.push_back(p);
    used[l] += n;
  }
  for (auto& bs : layer_buckets_)
    for (Bucket& b : bs) {
      if (b.refs.size() == 1 && b.refs[0].grad.numel() >= cap) continue;
      int64_t n = 0;
      for (const ParamRef& p : b.refs) n += p.grad.numel();
      b.flat = Tensor::empty({n}, DType::F32, comm.device());
    }
}

void OverlappedGradReducer::after_block(int layer, bool backward) {
  if (!armed_ || !backward || layer < 0 || layer >= (int)layer_buckets_.size() || done_[layer]) return;
  done_[layer] = 1;
  for (Bucket& b : layer_buckets_[layer]) {
    if (!b.flat.defined()) {
      Tensor g = b.refs[0].grad;
      last_ticket_ = comm_.start_all_reduce(g, ReduceOp::Sum);
    } else {
      int64_t off = 0;
      for (const ParamRef& p : b.refs) {
        b.flat.slice0(off, p.grad.numel()).copy_from(p.grad.reshape({p.grad.numel()}));
        off += p.grad.numel();
      }
      last_ticket_ = comm_.start_all_reduce(b.flat, ReduceOp::Sum);
    }
    ++started_;
  }
}

int OverlappedGradReducer::finish() {
  if (last_ticket_ > 0) comm_.wait(last_ticket_);
  last_ticket_ = 0;
  std::vector<ParamRef> rest = rest_;
  for (size_t l = 0; l < layer_buckets_.size(); ++l) {
    for (Bucket& b : layer_buckets_[l]) {
      if (!done_[l]) {  // its backward did not run (or the reducer was not armed): reduce it now
        rest.insert(rest.end(), b.refs.begin(), b.refs.end());
        continue;
      }
      if (!b.flat.defined()) continue;
      int64_t off = 0;
      for (const ParamRef& p : b.refs) {
        Tensor g = p.grad.reshape({p.grad.numel()});
        g.copy_from(b.flat.slice0(off, p.grad.numel()));
        off += p.grad.numel();
      }
    }
    done_[l] = 0;
  }
  const int calls = started_ + allreduce_grads(comm_, rest, ReduceOp::Sum, bucket_bytes_);
  started_ = 0;
  armed_ = false;
  return calls;
}

}  // namespace qtune
