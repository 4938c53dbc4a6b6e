// adaption_attention (see adaption_attention.h): shape checks, the GEMMs (ops/matmul.h, either device) and
// the CPU loops of the two row kernels; the CUDA row kernels are in cuda/adaption_attention.cu.
#include "peft/adaption_attention.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/matmul.h"
#ifdef QTUNE_HAVE_CUDA
#include "peft/cuda/adaption_attention_cuda.h"
#endif

namespace qtune {

namespace {

struct Dims {
  int64_t N, Hq, D, Lp, Hkv;
  int64_t R() const { return N * Hq; }    // score rows (query heads)
  int64_t W() const { return Lp * Hkv; }  // score columns (prompt rows x kv heads)
};

Dims check(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs,
           const std::vector<const Tensor*>& like_q) {
  if (q.ndim() != 3 || k.ndim() != 3 || k.shape() != v.shape() || k.size(2) != q.size(2) || k.size(1) == 0 ||
      q.size(1) % k.size(1) != 0)
    throw_error(ErrorKind::Shape, op,
                ": q [N, Hq, D] and k, v [Lp, Hkv, D] (Hq a multiple of Hkv) do not fit: q ", q.describe(),
                ", k ", k.describe(), ", v ", v.describe());
  Dims d{q.size(0), q.size(1), q.size(2), k.size(0), k.size(1)};
  if (probs.dtype() != DType::F32 || probs.numel() != d.R() * d.Lp)
    throw_error(ErrorKind::Shape, op, ": probs must be F32 [", d.N, ", ", d.Hq, ", ", d.Lp, "], got ",
                probs.describe());
  for (const Tensor* t : like_q)
    if (t->numel() != q.numel())
      throw_error(ErrorKind::Shape, op, ": ", t->describe(), " must have q's shape ", shape_str(q.shape()));
  for (const Tensor* t : {&k, &v, &probs})
    if (t->device() != q.device())
      throw_error(ErrorKind::Shape, op, ": tensors on different devices (q ", q.describe(), ", ",
                  t->describe(), ")");
  for (const Tensor* t : like_q)
    if (t->device() != q.device())
      throw_error(ErrorKind::Shape, op, ": tensors on different devices (q ", q.describe(), ", ",
                  t->describe(), ")");
  if (!q.is_cuda())
    for (const Tensor* t : {&q, &k, &v})
      if (t->dtype() != DType::F32)
        throw_error(ErrorKind::Shape, op, ": on the CPU every tensor is F32, got ", t->describe());
  return d;
}

// probs[r, p] = softmax_p(s[r, p·Hkv + j]·scale), w[r, c] = gate·probs on the row's columns, else 0.
void rows_forward_cpu(float* probs, float* w, const float* s, const Dims& d, float scale, float gate) {
  const int64_t W = d.W(), G = d.Hq / d.Hkv;
  for (int64_t r = 0; r < d.R(); ++r) {
    const int64_t j = (r % d.Hq) / G;
    const float* sr = s + r * W;
    float* pr = probs + r * d.Lp;
    float m = -INFINITY, sum = 0.0f;
    for (int64_t p = 0; p < d.Lp; ++p) m = std::max(m, sr[p * d.Hkv + j] * scale);
    for (int64_t p = 0; p < d.Lp; ++p) sum += pr[p] = std::exp(sr[p * d.Hkv + j] * scale - m);
    float* wr = w + r * W;
    for (int64_t c = 0; c < W; ++c) wr[c] = 0.0f;
    for (int64_t p = 0; p < d.Lp; ++p) {
      pr[p] /= sum;
      wr[p * d.Hkv + j] = gate * pr[p];
    }
  }
}

// With dŝ[p] = ds[r, p·Hkv + j] (= dout·v_p): z = gate·P ⊙ (dŝ − Σ P·dŝ)·scale and w = gate·P on the row's
// columns (else 0); dgate += Σ_r Σ_p P·dŝ.
void rows_backward_cpu(float* z, float* w, float* dgate, const float* ds, const float* probs, const Dims& d,
                       float scale, float gate) {
  const int64_t W = d.W(), G = d.Hq / d.Hkv;
  double dg = 0;
  for (int64_t r = 0; r < d.R(); ++r) {
    const int64_t j = (r % d.Hq) / G;
    const float* dr = ds + r * W;
    const float* pr = probs + r * d.Lp;
    float dot = 0.0f;
    for (int64_t p = 0; p < d.Lp; ++p) dot += pr[p] * dr[p * d.Hkv + j];
    dg += dot;
    float* zr = z + r * W;
    float* wr = w + r * W;
    for (int64_t c = 0; c < W; ++c) zr[c] = wr[c] = 0.0f;
    for (int64_t p = 0; p < d.Lp; ++p) {
      zr[p * d.Hkv + j] = gate * pr[p] * (dr[p * d.Hkv + j] - dot) * scale;
      wr[p * d.Hkv + j] = gate * pr[p];
    }
  }
  if (dgate) *dgate += (float)dg;
}

}  // namespace

void adaption_attention_forward(Tensor& out, Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v,
                                float gate) {
  const char* op = "adaption_attention_forward";
  const Dims d = check(op, q, k, v, probs, {&out});
  const Device dev = q.device();
  const float scale = 1.0f / std::sqrt((float)d.D);
  Tensor q2 = q.reshape({d.R(), d.D}), k2 = k.reshape({d.W(), d.D}), v2 = v.reshape({d.W(), d.D});
  Tensor s = Tensor::empty({d.R(), d.W()}, DType::F32, dev);  // every head against every kv head
  matmul(s, q2, k2, false, true);
  Tensor w = Tensor::empty({d.R(), d.W()}, v.dtype(), dev);
  if (q.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    adaption_rows_forward_cuda(probs, w, s, d.Hq, d.Hkv, d.Lp, scale, gate);
#endif
  } else {
    rows_forward_cpu(probs.data<float>(), w.data<float>(), s.data<float>(), d, scale, gate);
  }
  s = Tensor();
  Tensor out2 = out.reshape({d.R(), d.D});
  matmul(out2, w, v2, false, false);  // [R, D] = W·V
}

void adaption_attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dgate, const Tensor& dout,
                                 const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs,
                                 float gate) {
  const char* op = "adaption_attention_backward";
  const Dims d = check(op, q, k, v, probs, {&dq, &dout});
  if (dk.numel() != k.numel() || dv.numel() != k.numel() || dk.device() != q.device() ||
      dv.device() != q.device())
    throw_error(ErrorKind::Shape, op, ": dk, dv must be ", shape_str(k.shape()), " on q's device, got ",
                dk.describe(), ", ", dv.describe());
  if (dgate && (dgate->numel() != 1 || dgate->dtype() != DType::F32 || dgate->device() != q.device()))
    throw_error(ErrorKind::Shape, op, ": dgate must be F32 [1] on q's device, got ", dgate->describe());
  const Device dev = q.device();
  const float scale = 1.0f / std::sqrt((float)d.D);
  Tensor q2 = q.reshape({d.R(), d.D}), k2 = k.reshape({d.W(), d.D}), v2 = v.reshape({d.W(), d.D});
  Tensor do2 = dout.reshape({d.R(), d.D});
  Tensor ds = Tensor::empty({d.R(), d.W()}, DType::F32, dev);
  matmul(ds, do2, v2, false, true);  // dŝ = dout·Vᵀ, every kv head
  Tensor z = Tensor::empty({d.R(), d.W()}, q.dtype(), dev), w = Tensor::empty({d.R(), d.W()}, v.dtype(), dev);
  if (q.is_cuda()) {
#ifdef QTUNE_HAVE_CUDA
    adaption_rows_backward_cuda(z, w, dgate, ds, probs, d.Hq, d.Hkv, d.Lp, scale, gate);
#endif
  } else {
    rows_backward_cpu(z.data<float>(), w.data<float>(), dgate ? dgate->data<float>() : nullptr,
                      ds.data<float>(), probs.data<float>(), d, scale, gate);
  }
  ds = Tensor();
  Tensor dq2 = dq.reshape({d.R(), d.D}), dk2 = dk.reshape({d.W(), d.D}), dv2 = dv.reshape({d.W(), d.D});
  matmul(dq2, z, k2, false, false, 1.0f, 1.0f);  // dq += Z·K
  matmul(dk2, z, q2, true, false);               // dk = Zᵀ·Q
  matmul(dv2, w, do2, true, false);              // dv = Wᵀ·dout
}

}  // namespace qtune
