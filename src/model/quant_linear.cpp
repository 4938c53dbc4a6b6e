// CPU forward passes of the quantized Linear storage (see quant_linear.h for the arithmetic), the moves
// between devices, and the dispatch to the CUDA side (model/cuda/) for storage on the GPU.
#include "model/quant_linear.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "model/cuda/quant_linear_cuda.h"
#include "quant/codebook.h"

namespace qtune {

namespace {

float round_to(DType dt, float f) {
  switch (dt) {
    case DType::BF16:
      return bf16_to_f32(f32_to_bf16(f));
    case DType::F16:
      return f16_to_f32(f32_to_f16(f));
    default:
      return f;
  }
}

// The 16 dequantized weight values of one block: cd(orig(code[c] * absmax)).
void block_table(const Quant4Linear& w, float absmax, float* lut) {
  const float* code = code4(w.q.quant_type);
  if (w.compute_dtype == DType::F32 && w.q.dtype == DType::F32) {
    for (int c = 0; c < 16; c++) lut[c] = code[c] * absmax;
    return;
  }
  for (int c = 0; c < 16; c++) lut[c] = round_to(w.compute_dtype, round_to(w.q.dtype, code[c] * absmax));
}

// Calls f(pos, end, lut) for each run of flat weight indices [pos, end) of row o inside one block.
template <class F>
void for_row_segments(const Quant4Linear& w, int64_t o, int64_t I, F&& f) {
  const int64_t bs = w.q.blocksize;
  const float* absmax = w.absmax.data<float>();
  float lut[16];
  for (int64_t pos = o * I, end = pos + I; pos < end;) {
    const int64_t blk = pos / bs, seg_end = std::min(end, (blk + 1) * bs);
    block_table(w, absmax[blk], lut);
    f(pos, seg_end, lut);
    pos = seg_end;
  }
}

inline int nibble(const uint8_t* packed, int64_t p) {
  const uint8_t b = packed[p >> 1];
  return (p & 1) ? (b & 15) : (b >> 4);  // element 2i in the high nibble
}

// Dequantizes rows [o0, o0 + rows) into buf [rows, I].
void dequant_rows(const Quant4Linear& w, int64_t o0, int64_t rows, int64_t I, float* buf) {
  const uint8_t* packed = w.q.packed.data<uint8_t>();
  for (int64_t r = 0; r < rows; r++) {
    const int64_t base = (o0 + r) * I;
    float* dst = buf + r * I;
    for_row_segments(w, o0 + r, I, [&](int64_t pos, int64_t end, const float* lut) {
      if (pos % 2 == 0 && end % 2 == 0) {  // byte-aligned run: two weights per byte
        const uint8_t* pb = packed + pos / 2;
        float* d = dst + (pos - base);
        for (int64_t j = 0, nb = (end - pos) / 2; j < nb; j++) {
          d[2 * j] = lut[pb[j] >> 4];
          d[2 * j + 1] = lut[pb[j] & 15];
        }
        return;
      }
      for (int64_t p = pos; p < end; p++) dst[p - base] = lut[nibble(packed, p)];
    });
  }
}

void check_args(const char* what, const Tensor& out, const Tensor& x, int64_t O, int64_t I,
                const Tensor* bias) {
  if (x.is_cuda() || out.is_cuda() || (bias && bias->is_cuda()))
    throw_error(ErrorKind::Usage, what, ": the weight's storage is on the CPU but x ", x.describe(),
                " / out ", out.describe(),
                " are not all CPU tensors (move the storage with quant4_linear_to / int8_linear_to)");
  if (x.dtype() != DType::F32 || out.dtype() != DType::F32 || x.size(-1) != I || out.size(-1) != O ||
      x.numel() / I != out.numel() / O)
    throw_error(ErrorKind::Shape, what, ": expected F32 x [N, ", I, "] and out [N, ", O, "], got ",
                x.describe(), " and ", out.describe());
  if (bias && (bias->dtype() != DType::F32 || bias->numel() != O))
    throw_error(ErrorKind::Shape, what, ": bias ", bias->describe(), " is not F32 [", O, "]");
}

// y += bias, the bias rounded to dt first (Linear4bit casts it to the compute dtype).
void add_bias(float* y, int64_t N, int64_t O, const Tensor* bias, DType dt = DType::F32) {
  if (!bias) return;
  const float* bp = bias->data<float>();
  std::vector<float> b(bp, bp + O);
  for (float& v : b) v = round_to(dt, v);
#pragma omp parallel for schedule(static) if (N * O >= (1 << 16))
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < O; o++) y[n * O + o] += b[(size_t)o];
}

}  // namespace

std::shared_ptr<const Quant4Linear> make_quant4_linear(Quant4Tensor q, DType compute_dtype) {
  if (compute_dtype != DType::F32 && compute_dtype != DType::BF16 && compute_dtype != DType::F16)
    throw_error(ErrorKind::Usage, "4-bit linear: compute dtype ", dtype_name(compute_dtype),
                " is not F32, BF16 or F16");
  auto w = std::make_shared<Quant4Linear>();
  w->absmax = quant4_absmax_f32(q);  // [num_blocks]
  w->q = std::move(q);
  w->compute_dtype = compute_dtype;
  return w;
}

std::shared_ptr<const Quant4Linear> quantize_linear_4bit(const Tensor& w, QuantType qt, int64_t blocksize,
                                                         bool double_quant, DType compute_dtype) {
  if (w.ndim() != 2)
    throw_error(ErrorKind::Shape, "quantize_linear_4bit: weight must be [O, I], got ", w.describe());
  if (w.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    return quantize_linear_4bit_cuda(w, qt, blocksize, double_quant, compute_dtype);
#else
    throw_error(ErrorKind::Unsupported, "quantize_linear_4bit: a GPU weight in a build without CUDA");
#endif
  }
  return make_quant4_linear(quantize_4bit(w, qt, blocksize, double_quant), compute_dtype);
}

std::shared_ptr<const Int8Linear> quantize_linear_8bit(const Tensor& w, float threshold) {
  if (w.ndim() != 2)
    throw_error(ErrorKind::Shape, "quantize_linear_8bit: weight must be [O, I], got ", w.describe());
  if (w.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    return quantize_linear_8bit_cuda(w, threshold);
#else
    throw_error(ErrorKind::Unsupported, "quantize_linear_8bit: a GPU weight in a build without CUDA");
#endif
  }
  auto l = std::make_shared<Int8Linear>();
  // bitsandbytes' Int8Params quantizes an f16 copy of the weight, without outliers.
  l->w = int8_vectorwise_quant(w.dtype() == DType::F16 ? w : w.to_dtype(DType::F16), 0.0f);
  l->threshold = threshold;
  return l;
}

std::shared_ptr<const Quant4Linear> quant4_linear_to(const Quant4Linear& w, Device device) {
  auto r = std::make_shared<Quant4Linear>(w);
  for (Tensor* t : {&r->q.packed, &r->q.absmax, &r->q.nested_absmax, &r->q.nested_code})
    if (t->defined()) *t = t->to(device);
  if (device == Device::CPU)
    r->absmax = quant4_absmax_f32(r->q);
  else
    r->absmax = r->q.nested ? Tensor() : r->q.absmax;
  return r;
}

std::shared_ptr<const Int8Linear> int8_linear_to(const Int8Linear& w, Device device) {
  auto r = std::make_shared<Int8Linear>(w);
  r->w.q = w.w.q.to(device);
  r->w.scale = w.w.scale.to(device);
  return r;
}

Tensor quant4_linear_dense(const Quant4Linear& w) {
  if (w.on_cuda())
    throw_error(ErrorKind::Usage,
                "quant4_linear_dense: the storage is on the GPU (quant4_dequantize_rows_cuda)");
  const int64_t O = w.q.shape[0], I = w.q.shape[1];
  Tensor out = Tensor::empty({O, I}, DType::F32);
  dequant_rows(w, 0, O, I, out.data<float>());
  return out;
}

void quant4_linear_forward(Tensor& out, const Tensor& x, const Quant4Linear& w, const Tensor* bias) {
  const int64_t O = w.q.shape[0], I = w.q.shape[1];
#ifdef QTUNE_HAVE_CUDA
  if (w.on_cuda() || x.is_cuda()) return quant4_linear_forward_cuda(out, x, w, bias);
#endif
  check_args("quant4_linear_forward", out, x, O, I, bias);
  const int64_t N = x.numel() / I;
  const float* xp = x.data<float>();  // [N, I]
  float* y = out.data<float>();       // [N, O]
  const uint8_t* packed = w.q.packed.data<uint8_t>();
  const DType cd = w.compute_dtype;
  std::vector<float> xr;  // x rounded to the compute dtype, as Linear4bit casts it [N, I]
  if (cd != DType::F32) {
    xr.resize((size_t)(N * I));
    for (int64_t i = 0; i < N * I; i++) xr[(size_t)i] = round_to(cd, xp[i]);
    xp = xr.data();
  }
  if (N == 1 && I % 2 == 0) {
    // Fused GEMV, one row: rows and blocks start on byte boundaries (I and the block size are even), so
    // each packed byte gives two weights, looked up in the block's 16-entry table.
#pragma omp parallel for schedule(static) if (O * I >= (1 << 15))
    for (int64_t o = 0; o < O; o++) {
      float acc0 = 0.0f, acc1 = 0.0f;
      const int64_t base = o * I;
      for_row_segments(w, o, I, [&](int64_t pos, int64_t end, const float* lut) {
        const uint8_t* pb = packed + pos / 2;  // [(end - pos) / 2]
        const float* xs = xp + (pos - base);   // [end - pos]
        for (int64_t j = 0, nb = (end - pos) / 2; j < nb; j++) {
          const uint8_t b = pb[j];
          acc0 += lut[b >> 4] * xs[2 * j];
          acc1 += lut[b & 15] * xs[2 * j + 1];
        }
      });
      y[o] = acc0 + acc1;
    }
  } else if (N <= 4) {
    // Fused GEMV: each packed byte is read once for all N rows of x.
#pragma omp parallel for schedule(static) if (O * I >= (1 << 15))
    for (int64_t o = 0; o < O; o++) {
      float acc[4] = {0, 0, 0, 0};
      const int64_t base = o * I;
      for_row_segments(w, o, I, [&](int64_t pos, int64_t end, const float* lut) {
        for (int64_t p = pos; p < end; p++) {
          const float wv = lut[nibble(packed, p)];
          for (int64_t n = 0; n < N; n++) acc[n] += wv * xp[n * I + (p - base)];
        }
      });
      for (int64_t n = 0; n < N; n++) y[n * O + o] = acc[n];
    }
  } else {
    // Tiles of output rows, each dequantized into a per-thread buffer, then y[:, tile] = x · tileᵀ by a
    // single-threaded sgemm (OpenBLAS's own pool would fight the OpenMP threads, as in ops/cpu/matmul.cpp).
    static std::once_flag blas_once;
    std::call_once(blas_once, [] { openblas_set_num_threads(1); });
    const int64_t tile = 64, ntiles = (O + tile - 1) / tile;
#pragma omp parallel
    {
      std::vector<float> buf((size_t)(tile * I));  // [tile, I], reused across this thread's tiles
#pragma omp for schedule(dynamic)
      for (int64_t t = 0; t < ntiles; t++) {
        const int64_t o0 = t * tile, rows = std::min(tile, O - o0);
        dequant_rows(w, o0, rows, I, buf.data());
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)rows, (int)I, 1.0f, xp, (int)I,
                    buf.data(), (int)I, 0.0f, y + o0, (int)O);
      }
    }
  }
  add_bias(y, N, O, bias, cd);
  if (cd != DType::F32)  // the product comes back in the compute dtype
    for (int64_t i = 0; i < N * O; i++) y[i] = round_to(cd, y[i]);
}

void int8_linear_forward(Tensor& out, const Tensor& x, const Int8Linear& w, const Tensor* bias) {
  const int64_t O = w.w.q.size(0), K = w.w.q.size(1);
#ifdef QTUNE_HAVE_CUDA
  if (w.on_cuda() || x.is_cuda()) return int8_linear_forward_cuda(out, x, w, bias);
#endif
  check_args("int8_linear_forward", out, x, O, K, bias);
  const int64_t N = x.numel() / K;
  const float* xp = x.data<float>();  // [N, K]
  float* y = out.data<float>();       // [N, O]
  const float thr = w.threshold;

  // Activations: f16-rounded, outlier columns, row-wise int8.
  std::vector<float> xh((size_t)(N * K));  // [N, K]
  for (int64_t i = 0; i < N * K; i++) xh[(size_t)i] = round_to(DType::F16, xp[i]);
  std::vector<uint8_t> is_out((size_t)K, 0);
  std::vector<int64_t> out_cols;
  if (thr > 0.0f)
    for (int64_t i = 0; i < N * K; i++)
      if (std::fabs(xh[(size_t)i]) >= thr) is_out[(size_t)(i % K)] = 1;
  for (int64_t c = 0; c < K; c++)
    if (is_out[(size_t)c]) out_cols.push_back(c);
  std::vector<int8_t> qa((size_t)(N * K));  // [N, K]
  std::vector<float> sa((size_t)N);         // [N]
#pragma omp parallel for schedule(static) if (N * K >= (1 << 15))
  for (int64_t m = 0; m < N; m++) {
    const float* r = xh.data() + m * K;
    float a = 0.0f;
    for (int64_t c = 0; c < K; c++)
      if (!(thr > 0.0f && std::fabs(r[c]) >= thr)) a = std::max(a, std::fabs(r[c]));
    sa[(size_t)m] = a;
    const float s = (1.0f / a) * 127.0f;
    for (int64_t c = 0; c < K; c++)
      qa[(size_t)(m * K + c)] = (a == 0.0f || is_out[(size_t)c]) ? 0 : (int8_t)std::nearbyint(r[c] * s);
  }

  // Outlier weight columns in f32: [O, n_out].
  const int64_t n_out = (int64_t)out_cols.size();
  const int8_t* qb = w.w.q.data<int8_t>();    // [O, K]
  const float* sb = w.w.scale.data<float>();  // [O]
  std::vector<float> wout((size_t)(O * n_out));
  for (int64_t o = 0; o < O; o++)
    for (int64_t j = 0; j < n_out; j++)
      wout[(size_t)(o * n_out + j)] =
          ((float)qb[o * K + out_cols[(size_t)j]] * sb[o]) * 7.874015718698502e-3f;

  const float* bp = bias ? bias->data<float>() : nullptr;
  // The int32 products: a scalar loop for a few rows; otherwise dgemm on the int8 values widened to f64
  // per tile of weight rows, which is exact (every partial sum is an integer below 2^53) and uses the BLAS
  // kernels; both give the same integer.
  std::vector<float> acc((size_t)(N * O));  // [N, O]
  if (N <= 4) {
#pragma omp parallel for schedule(static) if (N * O * K >= (1 << 16))
    for (int64_t o = 0; o < O; o++)
      for (int64_t m = 0; m < N; m++) {
        const int8_t* a = qa.data() + m * K;
        const int8_t* b = qb + o * K;
        int32_t s32 = 0;  // exact: |s32| <= 127 * 127 * K
        for (int64_t k = 0; k < K; k++) s32 += (int32_t)a[k] * (int32_t)b[k];
        acc[(size_t)(m * O + o)] = (float)s32;
      }
  } else {
    static std::once_flag blas_once;
    std::call_once(blas_once, [] { openblas_set_num_threads(1); });
    std::vector<double> ad(qa.begin(), qa.end());  // [N, K]
    const int64_t tile = 64, ntiles = (O + tile - 1) / tile;
#pragma omp parallel
    {
      std::vector<double> bt((size_t)(tile * K)), ct((size_t)(N * tile));  // [tile, K], [N, tile]
#pragma omp for schedule(dynamic)
      for (int64_t t = 0; t < ntiles; t++) {
        const int64_t o0 = t * tile, rows = std::min(tile, O - o0);
        for (int64_t i = 0; i < rows * K; i++) bt[(size_t)i] = qb[o0 * K + i];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)rows, (int)K, 1.0, ad.data(),
                    (int)K, bt.data(), (int)K, 0.0, ct.data(), (int)rows);
        for (int64_t m = 0; m < N; m++)
          for (int64_t r = 0; r < rows; r++)
            acc[(size_t)(m * O + o0 + r)] = (float)(int32_t)ct[(size_t)(m * rows + r)];
      }
    }
  }
#pragma omp parallel for schedule(static) if (N * O >= (1 << 14))
  for (int64_t m = 0; m < N; m++) {
    for (int64_t o = 0; o < O; o++) {
      float v = (acc[(size_t)(m * O + o)] * (sa[(size_t)m] * sb[o])) * 6.200124e-05f;
      if (bp) v += bp[o];
      for (int64_t j = 0; j < n_out; j++)  // one rounding per outlier column, as the CUDA epilogue
        v = std::fma(xp[m * K + out_cols[(size_t)j]], wout[(size_t)(o * n_out + j)], v);
      y[m * O + o] = v;
    }
  }
}

}  // namespace qtune
