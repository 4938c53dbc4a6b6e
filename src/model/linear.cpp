// Linear::forward: the dense product through ops/matmul.h (see linear.h for the extension points).
#include "model/linear.h"

#include "ops/matmul.h"

namespace qtune {

void Linear::forward(Tensor& out, const Tensor& x) const {
  linear_forward(out, x, weight, bias.defined() ? &bias : nullptr);
}

}  // namespace qtune
