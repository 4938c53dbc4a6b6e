// Training IA3 adapters (peft/ia3_model.h): each Ia3Layer on a model Linear is wrapped in an adapter that
// keeps its forward and implements the backward (train/linear_backward.h, TrainableAdapter::backward_linear):
//   output vectors   y = h ⊙ l, h = x·Wᵀ + b:   dl += Σ_n dy ⊙ h (h recomputed), base backward with dy ⊙ l
//   feed-forward     y = W·(x ⊙ l) + b:         base backward with x ⊙ l into d(x ⊙ l) = g, then
//                                               dx += g ⊙ l, dl += Σ_n g ⊙ x
// The vectors register in TrainableParams under PEFT's keys ("base_model.model.<module>.ia3_l"), as the
// tensors the forward reads: on the CPU the Ia3Model's masters themselves (an optimizer step is seen by the
// next forward at once), on a GPU model their F32 device copies (sync_to_host() brings them back before
// saving).
//
//   Ia3Model ia3 = Ia3Model::create(model, cfg);
//   TrainableParams params;
//   Ia3Training t(ia3, params);
//   ... causal_lm_forward_backward(model, ids, labels, &params, opts); optimizer step on params ...
//   t.sync_to_host();  ia3.save(dir);
// Destroying it puts the plain Ia3Layers back on the Linears.
#pragma once
#include <memory>
#include <vector>

#include "peft/ia3_model.h"
#include "train/trainable.h"

namespace qtune {

struct TrainIa3Adapter;  // ia3_train.cpp

class Ia3Training {
 public:
  // Throws ErrorKind::Usage when ia3 is merged (unmerge first).
  Ia3Training(Ia3Model& ia3, TrainableParams& params);
  ~Ia3Training();
  Ia3Training(const Ia3Training&) = delete;
  Ia3Training& operator=(const Ia3Training&) = delete;

  void refresh() {}     // nothing to do: the forward reads the registered tensors
  void sync_to_host();  // GPU model: the device vectors back into the Ia3Model's masters

 private:
  Ia3Model& ia3_;
  struct Slot {
    Linear* linear;
    std::shared_ptr<const LinearAdapter> original;
    std::shared_ptr<TrainIa3Adapter> adapter;
  };
  std::vector<Slot> slots_;
};

}  // namespace qtune
