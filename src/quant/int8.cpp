// LLM.int8 row-wise quantization, outlier columns and the reference mixed int8 / f32 matmul (see int8.h).
// The f32 arithmetic follows bitsandbytes' torch backend: the row scale is (1 / absmax) * 127, the int32
// accumulator is rescaled as acc * (sx * sw) * 6.200124e-05 (~1/127^2), dequantization is q * s * (1/127).
#include "quant/int8.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "quant/float_io.h"

namespace qtune {

using namespace quant_detail;

namespace {

void require_matrix(const Tensor& x, const char* what) {
  if (!x.defined() || x.is_cuda() || x.ndim() < 1)
    throw_error(ErrorKind::Usage, what, ": expected a CPU tensor with at least one dim, got ",
                x.defined() ? x.describe() : std::string("an undefined tensor"));
}

std::vector<float> to_f32(const Tensor& t, const char* what) {
  std::vector<float> v((size_t)t.numel());
  with_float_io(t.dtype(), what, [&](auto io) {
    using Io = decltype(io);
    const auto* p = t.data<typename Io::T>();
    for (int64_t i = 0; i < t.numel(); i++) v[(size_t)i] = Io::load(p[i]);
  });
  return v;
}

}  // namespace

Int8Rowwise int8_vectorwise_quant(const Tensor& x, float threshold) {
  require_matrix(x, "int8_vectorwise_quant");
  const int64_t cols = x.size(-1), rows = cols ? x.numel() / cols : 0;
  const std::vector<float> v = to_f32(x, "int8_vectorwise_quant");  // [rows, cols]
  Int8Rowwise r;
  r.q = Tensor::empty({rows, cols}, DType::I8);
  r.scale = Tensor::empty({rows}, DType::F32);
  std::vector<uint8_t> is_outlier_col((size_t)cols, 0);
  if (threshold > 0.0f)
    for (int64_t i = 0; i < rows * cols; i++)
      if (std::fabs(v[(size_t)i]) >= threshold) is_outlier_col[(size_t)(i % cols)] = 1;
  for (int64_t c = 0; c < cols; c++)
    if (is_outlier_col[(size_t)c]) r.outlier_cols.push_back(c);
  int8_t* q = r.q.data<int8_t>();
  float* scale = r.scale.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; row++) {
    const float* xr = v.data() + row * cols;  // [cols]
    auto outlier = [&](float a) { return threshold > 0.0f && std::fabs(a) >= threshold; };
    float a = 0.0f;
    for (int64_t c = 0; c < cols; c++)
      if (!outlier(xr[c])) a = std::max(a, std::fabs(xr[c]));  // outlier elements count as 0
    scale[row] = a;
    const float s = (1.0f / a) * 127.0f;
    for (int64_t c = 0; c < cols; c++) {
      const bool zero = a == 0.0f || outlier(xr[c]) || is_outlier_col[(size_t)c];
      q[row * cols + c] = zero ? 0 : (int8_t)std::nearbyint(xr[c] * s);  // round half to even
    }
  }
  return r;
}

Tensor int8_vectorwise_dequant(const Int8Rowwise& w) {
  if (!w.q.defined() || w.q.dtype() != DType::I8 || w.q.ndim() != 2 || !w.scale.defined() ||
      w.scale.dtype() != DType::F32 || w.scale.numel() != w.q.size(0))
    throw_error(ErrorKind::Usage, "int8_vectorwise_dequant: expected I8 [rows, cols] and F32 [rows], got ",
                w.q.defined() ? w.q.describe() : std::string("undefined"), " and ",
                w.scale.defined() ? w.scale.describe() : std::string("undefined"));
  const int64_t rows = w.q.size(0), cols = w.q.size(1);
  Tensor out = Tensor::empty({rows, cols}, DType::F32);
  const int8_t* q = w.q.data<int8_t>();
  const float* s = w.scale.data<float>();
  float* o = out.data<float>();
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++)
      o[r * cols + c] = ((float)q[r * cols + c] * s[r]) * 7.874015718698502e-3f;
  return out;
}

Tensor int8_linear(const Tensor& x, const Int8Rowwise& w, float threshold, const Tensor& bias) {
  require_matrix(x, "int8_linear");
  const Tensor wd = int8_vectorwise_dequant(w);  // validates w; [N, K]
  const int64_t K = x.size(-1), M = K ? x.numel() / K : 0, N = w.q.size(0);
  if (w.q.size(1) != K)
    throw_error(ErrorKind::Shape, "int8_linear: x ", x.describe(), " has ", K, " features but the weight ",
                w.q.describe(), " has ", w.q.size(1));
  std::vector<float> b;
  if (bias.defined()) {
    if (bias.numel() != N)
      throw_error(ErrorKind::Shape, "int8_linear: bias ", bias.describe(), " does not match ", N, " outputs");
    b = to_f32(bias, "int8_linear bias");
  }
  const Int8Rowwise xq = int8_vectorwise_quant(x, threshold);  // [M, K]
  const std::vector<float> xf = to_f32(x, "int8_linear");      // [M, K]
  Tensor y = Tensor::empty({M, N}, DType::F32);
  const int8_t* qa = xq.q.data<int8_t>();
  const int8_t* qb = w.q.data<int8_t>();
  const float* sa = xq.scale.data<float>();
  const float* sb = w.scale.data<float>();
  const float* wdp = wd.data<float>();
  float* yp = y.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; m++) {
    for (int64_t n = 0; n < N; n++) {
      int32_t acc = 0;  // exact: |acc| <= 127 * 127 * K
      for (int64_t k = 0; k < K; k++) acc += (int32_t)qa[m * K + k] * (int32_t)qb[n * K + k];
      float out = ((float)acc * (sa[m] * sb[n])) * 6.200124e-05f;
      for (int64_t c : xq.outlier_cols) out += xf[(size_t)(m * K + c)] * wdp[n * K + c];  // f32 outlier part
      yp[m * N + n] = b.empty() ? out : out + b[(size_t)n];
    }
  }
  return y;
}

}  // namespace qtune
