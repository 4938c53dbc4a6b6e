// Training attention with prefix key/value rows (ops/attention.h attention_forward_train_prefix /
// attention_backward_prefix). The prefix becomes the first P rows of a causal sequence of P + T rows:
//   q' = [0; q], k' = [pk; k], v' = [pv; v]   (per sequence, along the token axis)
// Query P + t then sees keys 0 .. P + t: the whole prefix and its own causal keys, as PEFT's prefix tuning
// attends (past_key_values before the tokens). The P dummy queries are zero; their outputs are dropped and,
// given zero output gradients, they contribute nothing in the backward (dS = P∘(dO·Vᵀ − Δ) = 0 there), so
// the result is exact and the CPU and CUDA kernels serve unchanged.
#include <vector>

#include "core/error.h"
#include "ops/attention.h"
#include "ops/check.h"
#include "ops/elementwise.h"

namespace qtune {
using namespace ops_detail;

namespace {

// Rows [t0, t0 + n) of sequence b of x [B, T, ...] as a [n, row] view.
Tensor seq_rows(const Tensor& x, int64_t b, int64_t t0, int64_t n) {
  const int64_t B = x.size(0), T = x.size(1);
  return x.reshape({B * T, -1}).slice0(b * T + t0, n);
}

// [B, P + T, ...] = [head; body] per sequence; head undefined: zeros.
Tensor concat_seq(const Tensor* head, const Tensor& body, int64_t P) {
  const int64_t B = body.size(0), T = body.size(1);
  Shape s = body.shape();
  s[1] = P + T;
  Tensor out =
      head ? Tensor::empty(s, body.dtype(), body.device()) : Tensor::zeros(s, body.dtype(), body.device());
  for (int64_t b = 0; b < B; b++) {
    if (head) {
      Tensor h = seq_rows(out, b, 0, P);
      h.copy_from(seq_rows(*head, b, 0, P));
    }
    Tensor r = seq_rows(out, b, P, T);
    r.copy_from(seq_rows(body, b, 0, T));
  }
  return out;
}

// seq_ids [B, T] → [B, P + T], the prefix rows taking the id of each row's first token.
Tensor concat_seq_ids(const Tensor& seq_ids, int64_t P) {
  const int64_t B = seq_ids.size(0), T = seq_ids.size(1);
  Tensor host = seq_ids.to(Device::CPU);
  std::vector<int32_t> ids(B * (P + T));
  const int32_t* s = host.data<int32_t>();
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < P + T; t++) ids[b * (P + T) + t] = s[b * T + (t < P ? 0 : t - P)];
  return Tensor::from_i32(ids, {B, P + T}).to(seq_ids.device());
}

void check_prefix(const char* op, const Tensor& q, const Tensor& k, const AttentionPrefix& p) {
  if (!p.k.defined() || !p.v.defined()) throw_error(ErrorKind::Shape, op, ": the prefix has no k or v");
  check_ndim(op, {"q", &q}, 4);
  check_ndim(op, {"k", &k}, 4);
  check_ndim(op, {"prefix.k", &p.k}, 4);
  const int64_t B = q.size(0), P = p.k.size(1), Hkv = k.size(2), D = q.size(3);
  check_shape(op, {"prefix.k", &p.k}, {B, P, Hkv, D});
  check_shape(op, {"prefix.v", &p.v}, {B, P, Hkv, D});
  if (P == 0) throw_error(ErrorKind::Shape, op, ": the prefix has no rows");
  if (p.k.dtype() != q.dtype() || p.v.dtype() != q.dtype() || p.k.device() != q.device() ||
      p.v.device() != q.device())
    throw_error(ErrorKind::Shape, op, ": prefix k/v ", p.k.describe(), " / ", p.v.describe(),
                " must have q's dtype and device (", q.describe(), ")");
}

// dst[b, rows] += src[b, P' rows] for every sequence.
void add_rows(Tensor& dst, int64_t dst_t0, const Tensor& src, int64_t src_t0, int64_t n) {
  for (int64_t b = 0; b < dst.size(0); b++) {
    Tensor d = seq_rows(dst, b, dst_t0, n);
    add_inplace(d, seq_rows(src, b, src_t0, n));
  }
}

}  // namespace

void attention_forward_train_prefix(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const AttentionPrefix& prefix, const Tensor* seq_ids) {
  const char* op = "attention_forward_train_prefix";
  check_prefix(op, q, k, prefix);
  check_shape(op, {"out", &out}, q.shape());
  check_shape(op, {"lse", &lse}, {q.size(0), q.size(1), q.size(2)});
  const int64_t B = q.size(0), T = q.size(1), P = prefix.k.size(1);
  Tensor q2 = concat_seq(nullptr, q, P), k2 = concat_seq(&prefix.k, k, P), v2 = concat_seq(&prefix.v, v, P);
  Tensor ids2 = seq_ids ? concat_seq_ids(*seq_ids, P) : Tensor();
  Tensor out2 = Tensor::empty(q2.shape(), out.dtype(), out.device());             // [B, P+T, Hq, D]
  Tensor lse2 = Tensor::empty({B, P + T, q.size(2)}, lse.dtype(), lse.device());  // [B, P+T, Hq]
  attention_forward_train(out2, lse2, q2, k2, v2, seq_ids ? &ids2 : nullptr);
  for (int64_t b = 0; b < B; b++) {
    Tensor o = seq_rows(out, b, 0, T), l = seq_rows(lse, b, 0, T);
    o.copy_from(seq_rows(out2, b, P, T));
    l.copy_from(seq_rows(lse2, b, P, T));
  }
}

void attention_backward_prefix(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                               const AttentionPrefix& prefix, const Tensor* seq_ids) {
  const char* op = "attention_backward_prefix";
  check_prefix(op, q, k, prefix);
  check_shape(op, {"dq", &dq}, q.shape());
  check_shape(op, {"dk", &dk}, k.shape());
  check_shape(op, {"dv", &dv}, v.shape());
  check_shape(op, {"dout", &dout}, q.shape());
  const int64_t T = q.size(1), P = prefix.k.size(1);
  for (Tensor* g : {prefix.dk, prefix.dv})
    if (g) check_shape(op, {"prefix.dk/dv", g}, prefix.k.shape());
  Tensor q2 = concat_seq(nullptr, q, P), k2 = concat_seq(&prefix.k, k, P), v2 = concat_seq(&prefix.v, v, P);
  Tensor out2 = concat_seq(nullptr, out, P), dout2 = concat_seq(nullptr, dout, P);
  Tensor lse2 = concat_seq(nullptr, lse, P);  // any finite lse serves the dummy rows: their dO is 0
  Tensor ids2 = seq_ids ? concat_seq_ids(*seq_ids, P) : Tensor();
  Tensor dq2 = Tensor::zeros(q2.shape(), dq.dtype(), dq.device());
  Tensor dk2 = Tensor::zeros(k2.shape(), dk.dtype(), dk.device());
  Tensor dv2 = Tensor::zeros(v2.shape(), dv.dtype(), dv.device());
  attention_backward(dq2, dk2, dv2, dout2, q2, k2, v2, out2, lse2, seq_ids ? &ids2 : nullptr);
  add_rows(dq, 0, dq2, P, T);
  add_rows(dk, 0, dk2, P, T);
  add_rows(dv, 0, dv2, P, T);
  if (prefix.dk) add_rows(*prefix.dk, 0, dk2, 0, P);
  if (prefix.dv) add_rows(*prefix.dv, 0, dv2, 0, P);
}

}  // namespace qtune
