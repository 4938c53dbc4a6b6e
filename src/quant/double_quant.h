// Double (nested) quantization of the 4-bit absmax, as bitsandbytes quantize_4bit(compress_statistics=True):
// offset = mean(absmax) (torch's f32 mean on the device that quantizes), then absmax - offset (f32) is
// quantized with the signed dynamic map in 8-bit blocks of 256. Dequantized absmax = f32(code[q] *
// nested_absmax) + offset (two roundings, as bitsandbytes computes it).
#pragma once
#include <cstdint>
#include <vector>

#include "quant/codebook.h"

namespace qtune {

// torch.mean of n f32 values on the CPU, bit for bit: torch's cascade sum (8-lane vectors, 4-way ILP,
// 4 levels of partial sums), then sum / n in f32. torch splits reductions of >= 32768 values across its
// threads; this matches torch run with one thread (and any thread count below that size).
float torch_mean_f32(const float* x, int64_t n);
// torch.mean of n f32 values on a CUDA device, bit for bit (torch 2.11's reduction of a contiguous tensor to
// one value; checked against tests/fixtures/quant/torch_cuda_mean.json from an H200): lanes of 4-wide loads
// (plain loads below 128 values) strided over the threads of a block, a tree within the block, and from
// 2^17 values on the partial sums of several blocks added by a last block. How many blocks depends on the
// device: sm_count and max_threads_per_sm are its multiProcessorCount and maxThreadsPerMultiProcessor
// (the defaults are an H100 / H200's).
float torch_cuda_mean_f32(const float* x, int64_t n, int sm_count = 132, int max_threads_per_sm = 2048);

struct NestedAbsmax {
  std::vector<uint8_t> q;     // [n]
  std::vector<float> absmax;  // [ceil(n / 256)]
  float offset = 0.0f;
};

constexpr int64_t kNestedBlocksize = 256;

// n >= 1 absmax values -> 8-bit codes with the signed dynamic map, by the backend's 8-bit rules and its
// mean (torch's CPU mean, or its CUDA mean on an H100 / H200).
NestedAbsmax double_quantize_absmax(const float* absmax, int64_t n, BnbBackend backend = BnbBackend::Cpu);
// out[i] = f32(code[q[i]] * nested_absmax[i / 256]) + offset.
void double_dequantize_absmax(const uint8_t* q, const float* nested_absmax, const float* code, float offset,
                              int64_t n, float* out);

}  // namespace qtune
