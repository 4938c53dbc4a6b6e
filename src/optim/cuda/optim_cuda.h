// CUDA versions of the optimizer kernels in optim/cpu/optim_kernels.h (device pointers; same formulas and
// the same f32 rounding, so CUDA and CPU steps agree bit for bit).
#pragma once
#include <cstdint>
#include <vector>

#include "optim/cpu/optim_kernels.h"

namespace qtune {

// A code book and its 65536-entry lookup table (quant/blockwise8.h) in device memory.
struct DeviceQuantMap {
  const float* code = nullptr;   // [256]
  const uint8_t* lut = nullptr;  // [65536]
};

void adamw_step_cuda(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h);
void bnb_adam32_step_cuda(float* p, const float* g, float* m, float* v, int64_t n, const AdamHyper& h);
void bnb_lion32_step_cuda(float* p, const float* g, float* m, int64_t n, const AdamHyper& h);
// 8-bit blockwise Adam (lion = false: q2/absmax2/map2 used) or Lion (lion = true).
void bnb8_step_cuda(bool lion, float* p, const float* g, uint8_t* q1, float* absmax1, uint8_t* q2,
                    float* absmax2, int64_t n, int64_t blocksize, const DeviceQuantMap& map1,
                    const DeviceQuantMap& map2, const AdamHyper& h);

// One tensor of a multi-tensor 8-bit step: device pointers (q2, absmax2 unused by Lion) and its own
// hyperparameters.
struct Bnb8Tensor {
  float* p;
  const float* g;
  uint8_t* q1;
  float* absmax1;
  uint8_t* q2;
  float* absmax2;
  int64_t n;
  AdamHyper h;
};
// bnb8_step_cuda over every tensor, bit for bit, in few launches: the full 256-blocks of up to 32 tensors
// per launch, partial last blocks (and other block sizes) one launch per tensor.
void bnb8_multi_step_cuda(bool lion, const std::vector<Bnb8Tensor>& ts, int64_t blocksize,
                          const DeviceQuantMap& map1, const DeviceQuantMap& map2);

}  // namespace qtune
