// CUDA pieces of gradient clipping (optim/clip.h) for gradients that live on the GPU.
#pragma once
#include <cstdint>
#include <vector>

namespace qtune {

// Σ x² of each f32 device array xs[i] (ns[i] elements), accumulated in f64; one copy back for all.
std::vector<double> sum_squares_cuda(const std::vector<const float*>& xs, const std::vector<int64_t>& ns);
// x[i] *= s on the device.
void scale_cuda(float* x, int64_t n, float s);

}  // namespace qtune
