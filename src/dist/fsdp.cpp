// FsdpShards (see fsdp.h): the layout of each layer's base weights, the shards, the two gather slots and
// the hooks that fill them.
#include "dist/fsdp.h"

#include <algorithm>
#include <map>

#include "core/allocator.h"
#include "core/error.h"
#include "model/quant_linear.h"

namespace qtune {
namespace {

constexpr int64_t kAlign = 256;  // every piece starts 256-byte aligned (vector loads, cuBLASLt)
constexpr int kFields = 8;       // weight | q4: packed, q.absmax, absmax, nested_absmax, nested_code |
                                 // q8: q, scale

int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

std::vector<Linear*> linears(LlamaLayer& L) {
  return {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};
}

// The tensor of field f of a Linear (its quantized storage given as mutable copies q4/q8), or null.
Tensor* field(Linear& lin, Quant4Linear* q4, Int8Linear* q8, int f) {
  switch (f) {
    case 0:
      return &lin.weight;
    case 1:
      return q4 ? &q4->q.packed : nullptr;
    case 2:
      return q4 ? &q4->q.absmax : nullptr;
    case 3:
      return q4 ? &q4->absmax : nullptr;
    case 4:
      return q4 ? &q4->q.nested_absmax : nullptr;
    case 5:
      return q4 ? &q4->q.nested_code : nullptr;
    case 6:
      return q8 ? &q8->w.q : nullptr;
    case 7:
      return q8 ? &q8->w.scale : nullptr;
  }
  return nullptr;
}

// U8 [nbytes] over a contiguous tensor's bytes (no ownership: used while t is alive).
Tensor bytes_of(const Tensor& t) {
  return Tensor::borrow(t.raw(), {(int64_t)t.nbytes()}, DType::U8, t.device(), nullptr);
}

}  // namespace

FsdpShards::FsdpShards(LlamaModel& model, Communicator& comm, const TrainableParams* params)
    : model_(model), comm_(comm), dev_(model.device()) {
  if (comm.device() != dev_)
    throw_error(ErrorKind::Usage, "--fsdp: the model is on ", device_name(dev_), ", the communicator on ",
                device_name(comm.device()));
  const int world = comm.world_size(), rank = comm.rank();
  std::vector<LlamaLayer>& layers = model.mutable_layers();
  plans_.resize(layers.size());
  int64_t max_full = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    LlamaLayer& L = layers[l];
    if (L.device != dev_)
      throw_error(ErrorKind::Unsupported, "--fsdp: layer ", l, " is on ", device_name(L.device),
                  ", the model on ", device_name(dev_), " (a device map split cannot be sharded)");
    LayerPlan& p = plans_[l];
    std::map<const void*, int> seen;  // tensors shared between fields (absmax on the GPU) are stored once
    std::vector<Tensor> sources;
    int64_t off = 0;
    for (Linear* lin : linears(L)) {
      std::vector<int> f(kFields, -1);
      Quant4Linear* q4 = const_cast<Quant4Linear*>(lin->q4.get());  // read only here
      Int8Linear* q8 = const_cast<Int8Linear*>(lin->q8.get());
      const bool trained = params && params->has(lin->name + ".weight");
      for (int k = 0; k < kFields; ++k) {
        const Tensor* t = field(*lin, q4, q8, k);
        if (!t || !t->defined() || (k == 0 && (trained || lin->quantized()))) continue;
        if (t->device() != dev_)
          throw_error(ErrorKind::Unsupported, "--fsdp: ", lin->name, " holds ", t->describe(),
                      " off the model's device");
        auto it = seen.find(t->raw());
        if (it != seen.end()) {
          f[k] = it->second;
          continue;
        }
        seen[t->raw()] = f[k] = (int)p.pieces.size();
        p.pieces.push_back({off, t->shape(), t->dtype()});
        sources.push_back(*t);
        off = round_up(off + (int64_t)t->nbytes(), kAlign);
        full_bytes_ += (int64_t)t->nbytes();
      }
      p.fields.push_back(f);
    }
    p.shard = off == 0 ? 0 : round_up((off + world - 1) / world, kAlign);
    if (p.shard == 0) continue;
    // The whole layer in one buffer (every rank builds the same bytes), then this rank's slice.
    Tensor full = Tensor::zeros({world * p.shard}, DType::U8, dev_);
    for (size_t i = 0; i < sources.size(); ++i)
      full.slice0(p.pieces[i].offset, (int64_t)sources[i].nbytes()).copy_from(bytes_of(sources[i]));
    p.local = Tensor::empty({p.shard}, DType::U8, dev_);
    p.local.copy_from(full.slice0(rank * p.shard, p.shard));
    shard_bytes_ += p.shard;
    max_full = std::max(max_full, world * p.shard);
  }
  for (Tensor& s : slot_) s = Tensor::empty({std::max<int64_t>(max_full, 1)}, DType::U8, dev_);
  for (size_t l = 0; l < layers.size(); ++l)
    if (plans_[l].shard > 0) point_layer((int)l, slot_[l % 2]);  // the full originals are freed here
  if (dev_ == Device::CUDA) device_empty_cache();
}

void FsdpShards::point_layer(int l, const Tensor& buffer) {
  LayerPlan& p = plans_[l];
  auto keep = std::make_shared<Tensor>(buffer);  // the views keep the buffer alive
  std::vector<Tensor> views;
  for (const Piece& pc : p.pieces)
    views.push_back(Tensor::borrow((char*)buffer.raw() + pc.offset, pc.shape, pc.dtype, dev_, keep));
  std::vector<Linear*> lins = linears(model_.mutable_layers()[l]);
  for (size_t i = 0; i < lins.size(); ++i) {
    Linear& lin = *lins[i];
    const std::vector<int>& f = p.fields[i];
    std::shared_ptr<Quant4Linear> q4 = lin.q4 ? std::make_shared<Quant4Linear>(*lin.q4) : nullptr;
    std::shared_ptr<Int8Linear> q8 = lin.q8 ? std::make_shared<Int8Linear>(*lin.q8) : nullptr;
    for (int k = 0; k < kFields; ++k)
      if (f[k] >= 0) *field(lin, q4.get(), q8.get(), k) = views[f[k]];
    if (q4) lin.q4 = q4;
    if (q8) lin.q8 = q8;
  }
}

int64_t FsdpShards::buffer_bytes() const {
  int64_t n = 0;
  for (const Tensor& s : slot_)
    if (s.defined()) n += (int64_t)s.nbytes();
  return n;
}

void FsdpShards::prefetch(int l) {
  if (l < 0 || l >= (int)plans_.size() || plans_[l].shard == 0) return;
  const int s = l % 2;
  if (held_[s] == l) return;
  // The slot's previous layer ran in blocks queued before this point; the gather is ordered after them.
  Tensor full = slot_[s].slice0(0, comm_.world_size() * plans_[l].shard);
  ticket_[s] = comm_.start_all_gather(plans_[l].local, full);
  held_[s] = l;
  ++gathers_;
}

void FsdpShards::ensure(int l) {
  if (plans_[l].shard == 0) return;
  const int s = l % 2;
  prefetch(l);
  if (ticket_[s] > 0) {
    comm_.wait(ticket_[s]);
    ticket_[s] = 0;
  }
}

void FsdpShards::before_block(int layer, int next, bool) {
  if (unsharded_) return;
  ensure(layer);
  prefetch(next);
}

void FsdpShards::unshard() {
  if (unsharded_) return;
  for (int s = 0; s < 2; ++s)
    if (ticket_[s] > 0) comm_.wait(ticket_[s]);
  for (size_t l = 0; l < plans_.size(); ++l) {
    LayerPlan& p = plans_[l];
    if (p.shard == 0) continue;
    Tensor own = Tensor::empty({comm_.world_size() * p.shard}, DType::U8, dev_);
    comm_.all_gather(p.local, own);
    ++gathers_;
    point_layer((int)l, own);
    p.local = Tensor();
  }
  for (Tensor& s : slot_) s = Tensor();
  shard_bytes_ = 0;
  unsharded_ = true;
}

}  // namespace qtune
