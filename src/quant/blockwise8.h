// 8-bit blockwise quantization with a 256-value code book (the dynamic map by default), bit-exact with the
// bitsandbytes CPU kernel (libbitsandbytes_cpu quantize_blockwise). Used by double quantization and by the
// 8-bit optimizers.
//
// Per block: absmax = max|x| (f32, NaN ignored; an all-zero block stores 0 and codes 0); v = clamp(x *
// (1/absmax), -1, 1); code = LUT[int(((v + 1) * 0.5) * 65535 + 0.5)] (f32 steps, truncation), where LUT[i]
// is the number of code midpoints 0.5 * (code[j] + code[j + 1]) strictly below -1 + 2i / 65535. This is
// the nearest code except within ~1.5e-5 of a midpoint (the LUT cell width), exactly as bitsandbytes' CPU
// path behaves (its CUDA kernel uses a binary search instead, and can differ there).
// Dequantization: f32(code[q] * absmax), rounded to the output dtype.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace qtune {

// The 65536-entry lookup table for one code book (256 sorted values in [-1, 1]); build once, reuse.
class Quant8Lut {
 public:
  explicit Quant8Lut(const std::vector<float>& code);  // throws ErrorKind::Usage unless 256 sorted values
  uint8_t lookup(float v) const;                       // v already scaled by 1/absmax
  const std::vector<float>& code() const { return code_; }

 private:
  std::vector<float> code_;
  std::vector<uint8_t> lut_;
};

struct Blockwise8 {
  Tensor q;       // U8, the input's shape
  Tensor absmax;  // F32 [ceil(numel / blocksize)]
  int64_t blocksize = 256;
};

// x: CPU F32/BF16/F16 tensor. blocksize: a power of two in [32, 4096].
Blockwise8 quantize_blockwise_8bit(const Tensor& x, const Quant8Lut& lut, int64_t blocksize);
// Back to the quantized tensor's shape in out_dtype (F32, BF16, F16).
Tensor dequantize_blockwise_8bit(const Blockwise8& b, const std::vector<float>& code, DType out_dtype);

// Raw kernels on host memory: x has n values of dtype; q n bytes; absmax ceil(n / blocksize) floats.
void quantize_blockwise_8bit_raw(const void* x, DType dtype, int64_t n, const Quant8Lut& lut,
                                 int64_t blocksize, uint8_t* q, float* absmax);
void dequantize_blockwise_8bit_raw(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                                   int64_t blocksize, DType out_dtype, void* out);

}  // namespace qtune
