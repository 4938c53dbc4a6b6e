// Training bottleneck adapters (peft/bottleneck_model.h): each BottleneckLayer on a model Linear is wrapped
// in an adapter that keeps its forward and implements the backward (TrainableAdapter::backward_linear in
// train/linear_backward.h). With h = x·Wᵀ + b recomputed, z = down(h), a = act(z), y = h + up(a):
//   d up.weight += dyᵀ·a,   d up.bias += Σ_n dy,   dz = (dy·up.weight) ⊙ act'(z),
//   d down.weight += dzᵀ·h, d down.bias += Σ_n dz, and the base backward with dh = dy + dz·down.weight.
// All adapter math in f32 (also on CUDA, where dh is rounded to BF16 for the base GEMM). The four tensors
// per layer register under their saved keys ("base_model.model.<module>.adapter_down.weight" ...), as the
// tensors the forward reads: the masters on the CPU, F32 device copies on a GPU model (sync_to_host()
// brings them back before saving).
//
//   BottleneckModel ad = BottleneckModel::create(model, cfg, seed);
//   TrainableParams params;
//   BottleneckTraining t(ad, params);
//   ... forward/backward, optimizer steps ...;  t.sync_to_host();  ad.save(dir);
#pragma once
#include <memory>
#include <vector>

#include "peft/bottleneck_model.h"
#include "train/trainable.h"

namespace qtune {

struct TrainBottleneckAdapter;  // bottleneck_train.cpp

class BottleneckTraining {
 public:
  BottleneckTraining(BottleneckModel& adapters, TrainableParams& params);
  ~BottleneckTraining();  // puts the plain layers back
  BottleneckTraining(const BottleneckTraining&) = delete;
  BottleneckTraining& operator=(const BottleneckTraining&) = delete;

  void refresh() {}     // nothing to do: the forward reads the registered tensors
  void sync_to_host();  // GPU model: the device tensors back into the masters

 private:
  struct Slot {
    Linear* linear;
    std::shared_ptr<const LinearAdapter> original;
    std::shared_ptr<TrainBottleneckAdapter> adapter;
  };
  std::vector<Slot> slots_;
};

}  // namespace qtune
