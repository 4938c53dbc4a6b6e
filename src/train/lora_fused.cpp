// The fused LoRA training products (see lora_fused.h): the CPU versions (a masked F32 copy of the input and
// OpenBLAS) and the dispatch to the CUDA kernels by the tensors' device.
#include "train/lora_fused.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>

#include "core/error.h"
#ifdef QTUNE_HAVE_CUDA
#include "train/cuda/lora_fused_cuda.h"
#endif

namespace qtune {
namespace {

void require_cpu_f32(const Tensor& t, const char* op, const char* name) {
  if (t.device() != Device::CPU || t.dtype() != DType::F32)
    throw_error(ErrorKind::Unsupported, op, ": ", name, " must be a CPU F32 tensor on the CPU path, got ",
                t.describe());
}

void require_2d(const Tensor& t, const char* op, const char* name, int64_t rows, int64_t cols) {
  if (t.ndim() != 2 || t.size(0) != rows || t.size(1) != cols)
    throw_error(ErrorKind::Shape, op, ": ", name, " must be [", rows, ", ", cols, "], got ", t.describe());
}

// (m ⊙ x) as an F32 [N, K] copy (x itself without a mask).
Tensor masked(const Tensor& x, const LoraMask* mask) {
  if (!mask) return x;
  Tensor d = Tensor::empty(x.shape(), DType::F32);
  const float* src = x.data<float>();
  float* dst = d.data<float>();
  const int64_t n = x.numel();
  const LoraMask m = *mask;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] = lora_mask_keeps(m, (uint64_t)i) ? src[i] * m.keep : 0.0f;
  return d;
}

bool on_gpu(const Tensor& t) {
  return t.device() != Device::CPU;
}

}  // namespace

LoraMask lora_mask(uint64_t seed, int64_t row0, int64_t K, double p) {
  LoraMask m;
  m.seed = seed;
  m.e0 = (uint64_t)row0 * (uint64_t)K;
  m.threshold = (uint32_t)std::min(32767.0, std::nearbyint(p * 32768.0));
  m.keep = (float)(1.0 / (1.0 - p));
  return m;
}

void lora_down(Tensor& out, const Tensor& x, const Tensor& w, float scale, const LoraMask* mask) {
  const char* op = "lora_down";
  const int64_t K = x.size(-1), N = x.numel() / std::max<int64_t>(K, 1), r = w.size(0);
  require_2d(w, op, "w", r, K);
  require_2d(out, op, "out", N, r);
  if (on_gpu(x)) {
#ifdef QTUNE_HAVE_CUDA
    return lora_down_cuda(out, x.reshape({N, K}), w, scale, mask);
#endif
  }
  for (const Tensor* t : std::initializer_list<const Tensor*>{&out, &x, &w})
    require_cpu_f32(*t, op, "every tensor");
  Tensor xd = masked(x.reshape({N, K}), mask);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, r, K, scale, xd.data<float>(), K, w.data<float>(),
              K, 0.0f, out.data<float>(), r);
}

void lora_down_group(Tensor* const* outs, const Tensor& x, const Tensor* const* ws,
                     const LoraMask* const* masks, int n) {
  if (n < 1 || n > kLoraGroupMax)
    throw_error(ErrorKind::Usage, "lora_down_group: 1 to ", kLoraGroupMax, " modules, got ", n);
  const int64_t K = x.size(-1), N = x.numel() / std::max<int64_t>(K, 1);
  for (int i = 0; i < n; i++) {
    require_2d(*ws[i], "lora_down_group", "w", ws[i]->size(0), K);
    require_2d(*outs[i], "lora_down_group", "out", N, ws[i]->size(0));
  }
#ifdef QTUNE_HAVE_CUDA
  if (on_gpu(x) && lora_down_group_cuda(outs, x.reshape({N, K}), ws, masks, n)) return;
#endif
  for (int i = 0; i < n; i++) lora_down(*outs[i], x, *ws[i], 1.0f, masks[i]);
}

void lora_down_grad(Tensor& g, const Tensor& d, const Tensor& x, float scale, const LoraMask* mask,
                    bool g_kr) {
  const char* op = "lora_down_grad";
  const int64_t K = x.size(-1), N = x.numel() / std::max<int64_t>(K, 1), r = d.size(-1);
  require_2d(d, op, "d", N, r);
  require_2d(g, op, "g", g_kr ? K : r, g_kr ? r : K);
  if (on_gpu(x)) {
#ifdef QTUNE_HAVE_CUDA
    return lora_down_grad_cuda(g, d, x.reshape({N, K}), scale, mask, g_kr);
#endif
  }
  for (const Tensor* t : std::initializer_list<const Tensor*>{&g, &d, &x})
    require_cpu_f32(*t, op, "every tensor");
  Tensor xd = masked(x.reshape({N, K}), mask);
  if (g_kr)  // g[K, r] += scale·xdᵀ·d
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, r, N, scale, xd.data<float>(), K, d.data<float>(),
                r, 1.0f, g.data<float>(), r);
  else  // g[r, K] += scale·dᵀ·xd
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, K, N, scale, d.data<float>(), r, xd.data<float>(),
                K, 1.0f, g.data<float>(), K);
}

void lora_up_dx(Tensor& dx, const Tensor& d, const Tensor& wt, const LoraMask* mask) {
  const char* op = "lora_up_dx";
  const int64_t K = dx.size(-1), N = dx.numel() / std::max<int64_t>(K, 1), r = d.size(-1);
  require_2d(d, op, "d", N, r);
  require_2d(wt, op, "wt", K, r);
  Tensor dx2 = dx.reshape({N, K});
  if (on_gpu(dx)) {
#ifdef QTUNE_HAVE_CUDA
    return lora_up_dx_cuda(dx2, d, wt, mask);
#endif
  }
  for (const Tensor* t : std::initializer_list<const Tensor*>{&dx, &d, &wt})
    require_cpu_f32(*t, op, "every tensor");
  Tensor t = Tensor::empty({N, K}, DType::F32);  // d·wtᵀ
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, K, r, 1.0f, d.data<float>(), r, wt.data<float>(), r,
              0.0f, t.data<float>(), K);
  const float* src = t.data<float>();
  float* dst = dx2.data<float>();
  const int64_t n = N * K;
  const LoraMask m = mask ? *mask : LoraMask();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] += lora_mask_keeps(m, (uint64_t)i) ? src[i] * m.keep : 0.0f;
}

void transpose_into(Tensor& out, const Tensor& in) {
  const char* op = "transpose_into";
  if (in.ndim() != 2) throw_error(ErrorKind::Shape, op, ": in must be 2-D, got ", in.describe());
  const int64_t R = in.size(0), C = in.size(1);
  require_2d(out, op, "out", C, R);
  if (on_gpu(in)) {
#ifdef QTUNE_HAVE_CUDA
    return transpose_into_cuda(out, in);
#endif
  }
  require_cpu_f32(in, op, "in");
  require_cpu_f32(out, op, "out");
  const float* src = in.data<float>();
  float* dst = out.data<float>();
  for (int64_t i = 0; i < R; i++)
    for (int64_t j = 0; j < C; j++) dst[j * R + i] = src[i * C + j];
}

}  // namespace qtune
