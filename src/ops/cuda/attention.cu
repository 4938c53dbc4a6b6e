// Fused causal GQA attention on the GPU, flash-attention style: scores never reach device memory; an
// online softmax (running max m, running sum l, f32) rescales the output accumulator tile by tile.
//   out[b, t, h, :] = Σ_s softmax_s(q[b, t, h]·k[b, s, h/G] / sqrt(D)) v[b, s, h/G],  s <= q_offset + t,
//   s < kv_len, G = Hq / Hkv.
// This file checks the arguments and picks one of two kernels:
// - attention_prefill.cu: bf16, D 16/32/64/96/128, T >= 16: tensor cores (mma.sync), cp.async K/V tiles;
// - attention_decode.cu: split-K flash-decoding for decode, small T and every other case (any float
//   dtype, D 8/16/32/64/96/128/256).
#include <cstdint>

#include "core/tensor.h"
#include "ops/cuda/attention_kernels.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"

namespace qtune {
namespace cuda {

namespace {

bool aligned16(const Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.raw()) % 16 == 0;
}

}  // namespace

void attention_forward(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset,
                       int64_t kv_len) {
  attention_forward_split(out, q, k, v, q_offset, kv_len, false);
}

// force_split: always the split-K kernel (tests compare both kernels on one input).
void attention_forward_split(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset,
                             int64_t kv_len, bool force_split) {
  const char* op = "attention_forward";
  require_cuda(out, op, "out");
  require_cuda(q, op, "q");
  require_cuda(k, op, "k");
  require_cuda(v, op, "v");
  if (q.ndim() != 4 || k.ndim() != 4)
    throw_error(ErrorKind::Shape, op, ": q must be [B, T, Hq, D] and k [B, Smax, Hkv, D], got q ",
                q.describe(), ", k ", k.describe());
  if (v.shape() != k.shape())
    throw_error(ErrorKind::Shape, op, ": v ", v.describe(), " does not match k ", k.describe());
  if (out.shape() != q.shape())
    throw_error(ErrorKind::Shape, op, ": out ", out.describe(), " does not match q ", q.describe());
  AttnDims a;
  a.B = checked_int(q.size(0), op);
  a.T = checked_int(q.size(1), op);
  a.Hq = checked_int(q.size(2), op);
  a.D = checked_int(q.size(3), op);
  a.Smax = checked_int(k.size(1), op);
  a.Hkv = checked_int(k.size(2), op);
  if (k.size(0) != a.B || k.size(3) != a.D || a.Hkv == 0 || a.Hq % a.Hkv != 0)
    throw_error(ErrorKind::Shape, op, ": k ", k.describe(), " does not fit q ", q.describe(),
                " (same B and D, Hq a multiple of Hkv)");
  if (q_offset < 0 || kv_len < 1 || kv_len > a.Smax)
    throw_error(ErrorKind::Shape, op, ": need q_offset >= 0 and 1 <= kv_len <= Smax = ", a.Smax,
                "; got q_offset ", q_offset, ", kv_len ", kv_len);
  a.q_offset = checked_int(q_offset, op);
  a.kv_len = (int)kv_len;
  checked_int(k.numel(), op);
  checked_int(q.numel(), op);
  if (q.dtype() != k.dtype() || q.dtype() != v.dtype())
    throw_error(ErrorKind::Unsupported, op, ": q ", q.describe(), ", k ", k.describe(), ", v ", v.describe(),
                " must share one dtype");
  require_dtype(q, op, "q", DType::BF16, DType::F32, DType::F16);
  require_dtype(out, op, "out", DType::BF16, DType::F32, DType::F16);
  if (a.B == 0 || a.T == 0 || a.Hq == 0) return;

  const bool prefill = !force_split && q.dtype() == DType::BF16 && prefill_supports(a.D) && a.T >= 16 &&
                       aligned16(k) && aligned16(v) && aligned16(q) && (out.dtype() != DType::F16);
  if (prefill) {
    launch_attention_prefill(out, q, k, v, a);
    return;
  }
  if (!aligned16(k) || !aligned16(v))
    throw_error(ErrorKind::Unsupported, op, ": k and v must start on 16-byte boundaries (k ", k.describe(),
                ")");
  launch_attention_split(out, q, k, v, a);
}

namespace {

// Dims of a device-position decode call: q [B, 1, Hq, D], k/v [B, Smax, Hkv, D] (checked).
AttnDims dims_at(const char* op, const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v) {
  require_cuda(out, op, "out");
  require_cuda(q, op, "q");
  require_cuda(k, op, "k");
  require_cuda(v, op, "v");
  if (q.ndim() != 4 || k.ndim() != 4 || q.size(1) != 1 || v.shape() != k.shape() ||
      out.shape() != q.shape() || k.size(0) != q.size(0) || k.size(3) != q.size(3) || k.size(2) == 0 ||
      q.size(2) % k.size(2) != 0)
    throw_error(ErrorKind::Shape, op,
                ": need q, out [B, 1, Hq, D] and k, v [B, Smax, Hkv, D] (Hq a multiple of ", "Hkv); got q ",
                q.describe(), ", k ", k.describe(), ", v ", v.describe(), ", out ", out.describe());
  if (q.dtype() != k.dtype() || q.dtype() != v.dtype())
    throw_error(ErrorKind::Unsupported, op, ": q ", q.describe(), ", k ", k.describe(), ", v ", v.describe(),
                " must share one dtype");
  require_dtype(q, op, "q", DType::BF16, DType::F32, DType::F16);
  require_dtype(out, op, "out", DType::BF16, DType::F32, DType::F16);
  if (!aligned16(k) || !aligned16(v))
    throw_error(ErrorKind::Unsupported, op, ": k and v must start on 16-byte boundaries (k ", k.describe(),
                ")");
  AttnDims a;
  a.B = checked_int(q.size(0), op);
  a.T = 1;
  a.Hq = checked_int(q.size(2), op);
  a.D = checked_int(q.size(3), op);
  a.Smax = checked_int(k.size(1), op);
  a.Hkv = checked_int(k.size(2), op);
  checked_int(k.numel(), op);
  a.q_offset = 0;
  a.kv_len = a.Smax;
  return a;
}

}  // namespace

int64_t attention_at_workspace_floats(const Tensor& q, const Tensor& k) {
  Tensor out = q;
  AttnDims a = dims_at("attention_at_workspace_floats", out, q, k, k);
  static const int32_t any_position = 0;
  a.pos_dev = &any_position;  // the device-position mode's slice count (the pointer is never read here)
  return attention_split_workspace_floats(a);
}

void attention_forward_at(Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& pos,
                          Tensor& workspace) {
  // without k_new nothing is written to the caches
  attention_rope_forward_at(out, q, nullptr, nullptr, const_cast<Tensor&>(k), const_cast<Tensor&>(v), pos,
                            nullptr, workspace);
}

void attention_rope_forward_at(Tensor& out, const Tensor& q, const Tensor* k_new, const Tensor* v_new,
                               Tensor& k, Tensor& v, const Tensor& pos, const Tensor* inv_freq,
                               Tensor& workspace) {
  const char* op = k_new ? "attention_rope_forward_at" : "attention_forward_at";
  AttnDims a = dims_at(op, out, q, k, v);
  if (k_new) {
    if (!v_new || !inv_freq) throw_error(ErrorKind::Usage, op, ": k_new needs v_new and inv_freq");
    require_cuda(*k_new, op, "k_new");
    require_cuda(*v_new, op, "v_new");
    require_cuda(*inv_freq, op, "inv_freq");
    require_dtype(*inv_freq, op, "inv_freq", DType::F32);
    const int64_t row = (int64_t)a.Hkv * a.D;
    if (a.B != 1 || a.D % 2 != 0 || k_new->numel() != row || v_new->numel() != row ||
        k_new->dtype() != q.dtype() || v_new->dtype() != q.dtype() || inv_freq->numel() != a.D / 2)
      throw_error(ErrorKind::Shape, op,
                  ": need batch 1, an even head dim, k_new and v_new of Hkv · D = ", row,
                  " values in q's dtype and inv_freq of D / 2; got q ", q.describe(), ", k_new ",
                  k_new->describe(), ", v_new ", v_new->describe(), ", inv_freq ", inv_freq->describe());
    a.k_new = k_new->raw();
    a.v_new = v_new->raw();
    a.inv_freq = inv_freq->data<float>();
  }
  require_cuda(pos, op, "pos");
  require_dtype(pos, op, "pos", DType::I32);
  require_cuda(workspace, op, "workspace");
  require_dtype(workspace, op, "workspace", DType::F32);
  if (pos.numel() != 1)
    throw_error(ErrorKind::Shape, op, ": pos must hold one position, got ", pos.describe());
  a.pos_dev = pos.data<int32_t>();
  const int64_t need = attention_split_workspace_floats(a);
  if (workspace.numel() < need)
    throw_error(ErrorKind::Shape, op, ": workspace ", workspace.describe(), " has fewer than the ", need,
                " floats needed (attention_at_workspace_floats)");
  a.workspace = workspace.data<float>();
  launch_attention_split(out, q, k, v, a);
}

}  // namespace cuda
}  // namespace qtune
