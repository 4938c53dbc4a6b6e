// Linear::forward: the dense product through ops/matmul.h (see linear.h for the extension points).
#include "model/linear.h"

#include <algorithm>

#include "model/quant_linear.h"
#include "ops/matmul.h"
#ifdef QTUNE_HAVE_CUDA
#include "model/cuda/quant_linear_cuda.h"
#endif

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

#ifdef QTUNE_HAVE_CUDA
namespace {

// One launch for Linears on the GPU whose weights are all of one quantized kind (member: &Linear::q4 or
// &Linear::q8), without adapters: run(outs, x, weights, biases). False, with nothing run, otherwise.
template <class W, class Run>
bool shared_quantized(const std::vector<Tensor*>& outs, const Tensor& x,
                      const std::vector<const Linear*>& lins, std::shared_ptr<const W> Linear::*member,
                      Run run) {
  if (!x.is_cuda()) return false;
  std::vector<const W*> ws;
  std::vector<const Tensor*> biases;
  for (const Linear* l : lins) {
    const W* w = (l->*member).get();
    if (!w || l->adapter || !w->on_cuda()) return false;
    ws.push_back(w);
    biases.push_back(l->bias.defined() ? &l->bias : nullptr);
  }
  run(outs, x, ws, biases);
  return true;
}

}  // namespace
#endif

void linear_forward_shared(const std::vector<Tensor*>& outs, const Tensor& x,
                           const std::vector<const Linear*>& lins) {
  if (std::all_of(lins.begin(), lins.end(), [](const Linear* l) { return l->plain(); })) {
    std::vector<const Tensor*> ws;
    for (const Linear* l : lins) ws.push_back(&l->weight);
    linear_forward_multi(outs, x, ws);
    return;
  }
#ifdef QTUNE_HAVE_CUDA
  if (shared_quantized(outs, x, lins, &Linear::q4, quant4_linear_forward_multi_cuda)) return;
  if (shared_quantized(outs, x, lins, &Linear::q8, int8_linear_forward_multi_cuda)) return;
#endif
  for (size_t j = 0; j < lins.size(); j++) lins[j]->forward(*outs[j], x);
}

}  // namespace qtune
