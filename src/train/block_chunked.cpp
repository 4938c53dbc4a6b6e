// The token-chunked forward and backward of a checkpointed Block (see block.h, BlockInputs::chunk_rows).
// Everything but attention is per token, so it can run over chunks of rows [r0, r0 + n):
//   forward   q, k, v for all N rows (chunked projections) → RoPE → attention (all rows) → att [N, Hq·D];
//             per chunk: x_mid = x + o(att), h2 = norm(x_mid), MLP, out = x_mid + down(·)
//   backward  recompute q, k, v, att; per chunk: recompute x_mid … act, back through down, SwiGLU,
//             gate/up, the post-attention norm and o_proj into d(att) [N, Hq·D]; attention backward (all
//             rows); per chunk: recompute h1, back through q/k/v and the input norm.
// The peak then holds ~9 [N, C]-sized tensors of the attention half (q, k, v, att, d(att), dq, dk, dv, dx)
// plus one chunk of MLP activations, instead of every activation of the block for all N rows. Linears run
// under a RowOffsetScope so that dropout masks match the unchunked step's (train/row_offset.h).
#include <algorithm>

#include "core/error.h"
#include "core/profile.h"
#include "ops/ops.h"
#include "train/block.h"
#include "train/linear_backward.h"
#include "train/lora_train.h"
#include "train/pass_scope.h"
#include "train/row_offset.h"

namespace qtune {

bool Block::chunks(const BlockInputs& in) const {
  return in.chunk_rows > 0 && in.B * in.T > in.chunk_rows && !L_.attn_adapter;
}

// s.q, s.k (rotated), s.v, s.att, s.lse for all rows, from x_in through chunked norm + projections.
void Block::attention_chunked(const Tensor& x_in, const BlockInputs& in, BlockSaved& s) const {
  const int64_t B = in.B, T = in.T, N = B * T, R = in.chunk_rows;
  s.q = act({B, T, Hq_, D_});
  s.k = act({B, T, Hkv_, D_});
  s.v = act({B, T, Hkv_, D_});
  Tensor q2 = s.q.reshape({N, Hq_ * D_}), k2 = s.k.reshape({N, Hkv_ * D_}), v2 = s.v.reshape({N, Hkv_ * D_});
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t n = std::min(R, N - r0);
    RowOffsetScope at(r0);
    Tensor h1 = act({n, C_});
    {
      QT_PROFILE("fwd.norm");
      rmsnorm_forward(h1, x_in.slice0(r0, n), L_.input_norm, eps_);
    }
    QT_PROFILE("fwd.linear");
    Tensor qr = q2.slice0(r0, n), kr = k2.slice0(r0, n), vr = v2.slice0(r0, n);
    lora_forward_group({&L_.q, &L_.k, &L_.v}, h1);
    L_.q.forward(qr, h1);
    L_.k.forward(kr, h1);
    L_.v.forward(vr, h1);
  }
  Tensor qh = s.q.reshape({N, Hq_, D_}), kh = s.k.reshape({N, Hkv_, D_});
  {
    QT_PROFILE("fwd.rope");
    rope_forward(qh, in.positions, in.inv_freq);
    rope_forward(kh, in.positions, in.inv_freq);
  }
  s.att = act({B, T, Hq_, D_});
  s.lse = Tensor::empty({B, T, Hq_}, DType::F32, dev_);
  QT_PROFILE("fwd.attention");
  if (in.prefixes)
    attention_forward_train_prefix(s.att, s.lse, s.q, s.k, s.v, (*in.prefixes)[index_], in.seq_ids);
  else
    attention_forward_train(s.att, s.lse, s.q, s.k, s.v, in.seq_ids);
}

namespace {

// One chunk's MLP-half activations.
struct MlpRows {
  Tensor x_mid, h2, gate, up, act;  // [n, C] x2, [n, F] x3
};

}  // namespace

void Block::forward_chunked(const Tensor& x_in, Tensor& out, const BlockInputs& in, BlockSaved& s) const {
  const int64_t N = in.B * in.T, R = in.chunk_rows;
  attention_chunked(x_in, in, s);
  const Tensor att2 = s.att.reshape({N, Hq_ * D_});
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t n = std::min(R, N - r0);
    RowOffsetScope at(r0);
    Tensor x_mid = act({n, C_}), h2 = act({n, C_}), gate = act({n, F_}), up = act({n, F_}), a = act({n, F_});
    {
      QT_PROFILE("fwd.linear");
      L_.o.forward(x_mid, att2.slice0(r0, n));
    }
    {
      QT_PROFILE("fwd.norm");
      add_inplace(x_mid, x_in.slice0(r0, n));
      rmsnorm_forward(h2, x_mid, L_.post_norm, eps_);
    }
    {
      QT_PROFILE("fwd.linear");
      lora_forward_group({&L_.gate, &L_.up}, h2);
      L_.gate.forward(gate, h2);
      L_.up.forward(up, h2);
    }
    {
      QT_PROFILE("fwd.swiglu");
      swiglu_forward(a, gate, up);
    }
    Tensor o = out.slice0(r0, n);
    {
      QT_PROFILE("fwd.linear");
      L_.down.forward(o, a);
    }
    QT_PROFILE("fwd.norm");
    add_inplace(o, x_mid);
  }
}

void Block::backward_chunked(Tensor& dx, const BlockInputs& in, BlockSaved& s) const {
  const int64_t B = in.B, T = in.T, N = B * T, R = in.chunk_rows;
  attention_chunked(s.x_in, in, s);
  Tensor dx2 = dx.reshape({N, C_});
  Tensor d_att = act({B, T, Hq_, D_});  // every chunk's o_proj backward writes its rows (overwrite_dx)
  {
    Tensor d_att2 = d_att.reshape({N, Hq_ * D_});
    const Tensor att2 = s.att.reshape({N, Hq_ * D_});
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t n = std::min(R, N - r0);
      RowOffsetScope at(r0);
      const Tensor x_rows = s.x_in.slice0(r0, n), att_rows = att2.slice0(r0, n);
      Tensor x_mid = act({n, C_}), h2 = act({n, C_}), gate = act({n, F_}), up = act({n, F_}),
             a = act({n, F_});
      {  // recompute the chunk's MLP input and activations
        QT_PROFILE("fwd.linear");
        L_.o.forward(x_mid, att_rows);
      }
      {
        QT_PROFILE("fwd.norm");
        add_inplace(x_mid, x_rows);
        rmsnorm_forward(h2, x_mid, L_.post_norm, eps_);
      }
      {
        QT_PROFILE("fwd.linear");
        lora_forward_group({&L_.gate, &L_.up}, h2);
        L_.gate.forward(gate, h2);
        L_.up.forward(up, h2);
      }
      {
        QT_PROFILE("fwd.swiglu");
        swiglu_forward(a, gate, up);
      }
      Tensor d_rows = dx2.slice0(r0, n);  // d(out) rows, F32; becomes d(x_mid), then d(x) below
      Tensor d_act = act({n, F_});
      {
        QT_PROFILE("bwd.linear");
        linear_backward(L_.down, &d_act, g_down_.w, g_down_.b, gemm_grad(d_rows), a, params_, true);
      }
      a = Tensor();
      Tensor d_gate = act({n, F_}), d_up = act({n, F_});  // written whole by the SwiGLU backward
      {
        QT_PROFILE("bwd.swiglu");
        swiglu_backward(d_gate, d_up, d_act, gate, up, /*accumulate=*/false);
      }
      d_act = gate = up = Tensor();
      Tensor d_h = Tensor::empty({n, C_}, DType::F32, dev_);
      {
        QT_PROFILE("bwd.linear");
        linear_backward(L_.gate, &d_h, g_gate_.w, g_gate_.b, d_gate, h2, params_, true);
        linear_backward(L_.up, &d_h, g_up_.w, g_up_.b, d_up, h2, params_);
      }
      d_gate = d_up = Tensor();
      {
        QT_PROFILE("bwd.norm");
        rmsnorm_backward(d_rows, g_post_norm_, d_h, x_mid, L_.post_norm, eps_);
      }
      Tensor d_att_rows = d_att2.slice0(r0, n);
      QT_PROFILE("bwd.linear");
      linear_backward(L_.o, &d_att_rows, g_o_.w, g_o_.b, gemm_grad(d_rows), att_rows, params_, true);
    }
  }
  Tensor dq, dk, dv;
  attention_grads(in, s, d_att, dq, dk, dv);
  s.drop_activations();
  d_att = Tensor();
  Tensor dqh = dq.reshape({N, Hq_, D_}), dkh = dk.reshape({N, Hkv_, D_});
  {
    QT_PROFILE("bwd.rope");
    rope_backward(dqh, in.positions, in.inv_freq);
    rope_backward(dkh, in.positions, in.inv_freq);
  }
  const Tensor dq2 = dq.reshape({N, Hq_ * D_}), dk2 = dk.reshape({N, Hkv_ * D_}),
               dv2 = dv.reshape({N, Hkv_ * D_});
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t n = std::min(R, N - r0);
    RowOffsetScope at(r0);
    const Tensor x_rows = s.x_in.slice0(r0, n);
    Tensor h1 = act({n, C_});
    {
      QT_PROFILE("fwd.norm");
      rmsnorm_forward(h1, x_rows, L_.input_norm, eps_);
    }
    Tensor d_h = Tensor::empty({n, C_}, DType::F32, dev_);
    {
      QT_PROFILE("bwd.linear");
      linear_backward(L_.q, &d_h, g_q_.w, g_q_.b, dq2.slice0(r0, n), h1, params_, true);
      linear_backward(L_.k, &d_h, g_k_.w, g_k_.b, dk2.slice0(r0, n), h1, params_);
      linear_backward(L_.v, &d_h, g_v_.w, g_v_.b, dv2.slice0(r0, n), h1, params_);
    }
    Tensor d_rows = dx2.slice0(r0, n);
    QT_PROFILE("bwd.norm");
    rmsnorm_backward(d_rows, g_in_norm_, d_h, x_rows, L_.input_norm, eps_);
  }
}

}  // namespace qtune
