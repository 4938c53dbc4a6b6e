// NF4 / FP4 tables and the dynamic 8-bit map. The dynamic map is rebuilt with torch's own f32 arithmetic
// (linspace with fused multiply-adds, f32 products with the decimal scale) so it matches bitsandbytes
// bit for bit; tests compare it with a map saved by bitsandbytes.
#include "quant/codebook.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace qtune {

namespace {

// get_4bit_type("nf4"): quantiles of N(0, 1) (create_normal_map(offset=0.9677083)), as f32.
const float kNF4[16] = {-1.0f,
                        -0.6961928009986877f,
                        -0.5250730514526367f,
                        -0.39491748809814453f,
                        -0.28444138169288635f,
                        -0.18477343022823334f,
                        -0.09105003625154495f,
                        0.0f,
                        0.07958029955625534f,
                        0.16093020141124725f,
                        0.24611230194568634f,
                        0.33791524171829224f,
                        0.44070982933044434f,
                        0.5626170039176941f,
                        0.7229568362236023f,
                        1.0f};

// get_4bit_type("fp4"): 1 sign bit (0b1000), 2 exponent bits, 1 mantissa bit, bias 2; the raw values
// {0, 0.0625, 8, 12, 4, 6, 2, 3} (and negated) divided in f32 by their maximum, 12. Code 8 ("-0") is +0.
struct FP4Table {
  float v[16];
  FP4Table() {
    const float raw[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};
    for (int i = 0; i < 8; i++) {
      v[i] = raw[i] / 12.0f;
      v[i + 8] = i == 0 ? 0.0f : -raw[i] / 12.0f;
    }
  }
};

// torch.linspace(start, end, steps) for f32 on the CPU, as torch's kernels compute it: step = (end - start) /
// (steps - 1) in f32; the first half is fma(step, i, start), the second half fma(-step, steps - 1 - i, end)
// (one rounding each: torch's x86-64 kernels are built with FMA contraction).
std::vector<float> torch_linspace_f32(float start, float end, int64_t steps) {
  std::vector<float> out((size_t)steps);
  const float step = (end - start) / (float)(steps - 1);
  const int64_t halfway = steps / 2;
  for (int64_t i = 0; i < steps; i++)
    out[(size_t)i] =
        i < halfway ? std::fmaf(step, (float)i, start) : std::fmaf(-step, (float)(steps - 1 - i), end);
  return out;
}

}  // namespace

const char* quant_type_name(QuantType t) {
  return t == QuantType::NF4 ? "nf4" : "fp4";
}

QuantType quant_type_from_name(const std::string& name, const std::string& context) {
  if (name == "nf4") return QuantType::NF4;
  if (name == "fp4") return QuantType::FP4;
  throw_error(ErrorKind::Format, context.empty() ? "" : context + ": ", "unknown 4-bit quant type '", name,
              "' (expected nf4 or fp4)");
}

const float* code4(QuantType t) {
  static const FP4Table fp4;
  return t == QuantType::NF4 ? kNF4 : fp4.v;
}

std::vector<float> create_dynamic_map(bool signed_map) {
  const int max_exponent_bits = 7, non_sign_bits = 7;
  std::vector<float> data;
  for (int i = 0; i < max_exponent_bits; i++) {
    int64_t items = signed_map ? (int64_t(1) << (i + non_sign_bits - max_exponent_bits)) + 1
                               : (int64_t(1) << (i + non_sign_bits - max_exponent_bits + 1)) + 1;
    std::vector<float> b = torch_linspace_f32(0.1f, 1.0f, items);
    // the decimal scale 10^(i-6) is a Python number, applied in f32
    static const double kDecimal[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
    const float scale = (float)kDecimal[i];
    for (int64_t j = 0; j + 1 < items; j++) data.push_back(scale * ((b[j] + b[j + 1]) / 2.0f));
    if (signed_map)
      for (int64_t j = 0; j + 1 < items; j++) data.push_back(-(scale * ((b[j] + b[j + 1]) / 2.0f)));
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  QT_CHECK(data.size() == 256, "dynamic map has ", data.size(), " values");
  std::sort(data.begin(), data.end());
  return data;
}

void check_blocksize(int64_t blocksize, const std::string& context) {
  bool pow2 = blocksize > 0 && (blocksize & (blocksize - 1)) == 0;
  if (!pow2 || blocksize < 32 || blocksize > 4096)
    throw_error(ErrorKind::Usage, context, ": invalid block size ", blocksize,
                " (expected a power of two from 32 to 4096)");
}

}  // namespace qtune
