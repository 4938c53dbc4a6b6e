// CUDA pieces of gradient clipping (optim/clip.h) for gradients that live on the GPU.
#pragma once
#include <cstdint>
#include <vector>

namespace qtune {

// Σ x² of each f32 device array xs[i] (ns[i] elements), accumulated in f64; one launch and one copy back
// for all.
std::vector<double> sum_squares_cuda(const std::vector<float*>& xs, const std::vector<int64_t>& ns);
// xs[i][j] *= s on the device, one launch for all arrays.
void scale_cuda(const std::vector<float*>& xs, const std::vector<int64_t>& ns, float s);
// xs[i][j] = 0 on the device, one launch for all arrays (a training step zeroes hundreds of LoRA gradients).
void zero_cuda(const std::vector<float*>& xs, const std::vector<int64_t>& ns);

}  // namespace qtune
