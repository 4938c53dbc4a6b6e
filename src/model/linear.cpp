// Linear::forward: the dense product through ops/matmul.h (see linear.h for the extension points).
#include "model/linear.h"

#include "model/quant_linear.h"
#include "ops/matmul.h"

namespace qtune {

int64_t Linear::out_features() const {
  return q4 ? q4->q.shape[0] : q8 ? q8->w.q.size(0) : weight.size(0);
}

int64_t Linear::in_features() const {
  return q4 ? q4->q.shape[1] : q8 ? q8->w.q.size(1) : weight.size(1);
}

void Linear::forward(Tensor& out, const Tensor& x) const {
  if (adapter && adapter->transforms_input())
    forward_base(out, adapter->transform_input(x));
  else
    forward_base(out, x);
  if (adapter) adapter->apply(out, x);
}

void Linear::forward_base(Tensor& out, const Tensor& x) const {
  if (q4)
    quant4_linear_forward(out, x, *q4, bias.defined() ? &bias : nullptr);
  else if (q8)
    int8_linear_forward(out, x, *q8, bias.defined() ? &bias : nullptr);
  else
    linear_forward(out, x, weight, bias.defined() ? &bias : nullptr);
}

}  // namespace qtune
