// Training-mode LoRA adapter (see lora_train.h): forward with dropout, backward into A and B.
#include "train/lora_train.h"

#include <cblas.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <map>

#include "core/error.h"
#include "core/profile.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "peft/adapter_ops.h"
#include "peft/dora_ops.h"
#include "train/linear_backward.h"
#include "train/lora_fused.h"
#include "train/pass_scope.h"
#include "train/row_offset.h"
#ifdef QTUNE_HAVE_CUDA
#include "train/cuda/lora_dropout.h"
#endif

namespace qtune {

struct TrainLoraAdapter;

namespace {

// QTUNE_LORA_MID_REUSE=0 turns the reuse off (benchmarks: the path before it, in the same binary).
bool mid_reuse_default() {
  const char* e = std::getenv("QTUNE_LORA_MID_REUSE");
  return !(e && std::string(e) == "0");
}
std::atomic<bool> g_mid_reuse{mid_reuse_default()};
std::atomic<uint64_t> g_mid_hits{0};

// A mid = (m ⊙ x)·Aᵀ [N, r] of one adapter's forward, kept for the forward (lora_forward_group), the
// recompute and the backward of the same pass. It is used only when every field of the key matches: the
// adapter, the pass (train/pass_scope.h: one Block's forward, recompute and backward, never another block's,
// step's or evaluation's), the row offset (train/row_offset.h: the chunk) and the input's size, the mask, and
// the training state's generation (bumped by set_step, set_training and every refresh of A). Inside one pass
// an adapter sees one input per row offset (the recompute reproduces the forward's bit for bit), so its
// address is not part of the key: the recompute's copy of h1 lives elsewhere than the forward's.
struct MidKey {
  const TrainLoraAdapter* adapter = nullptr;
  const LoraTraining::State* state = nullptr;
  uint64_t pass = 0, generation = 0;
  int64_t row0 = 0, N = 0, I = 0;
  LoraMask mask;
  bool drop = false;
  bool operator==(const MidKey& o) const {
    return adapter == o.adapter && pass == o.pass && generation == o.generation && row0 == o.row0 &&
           N == o.N && I == o.I && drop == o.drop && mask.seed == o.mask.seed && mask.e0 == o.mask.e0 &&
           mask.threshold == o.mask.threshold && mask.keep == o.mask.keep;
  }
};
struct MidEntry {
  MidKey key;
  Tensor mid;
};

// The kept mids of this thread: those of the unchunked training blocks between their forward and backward
// (7 · [N, r] per block, 0.46 MB at N = 2048, r = 16), and of the pass running now. A backward takes its
// block's (lora_forget_pass drops what it left); a store drops the entries of an older generation.
std::vector<MidEntry>& mid_cache() {
  thread_local std::vector<MidEntry> cache;
  return cache;
}

}  // namespace

void lora_forget_pass(uint64_t pass) {
  std::vector<MidEntry>& c = mid_cache();
  for (size_t i = c.size(); i-- > 0;)
    if (c[i].key.pass == pass) c.erase(c.begin() + (ptrdiff_t)i);
}

void lora_set_mid_reuse(bool on) {
  g_mid_reuse = on;
}

uint64_t lora_mid_reuse_hits() {
  return g_mid_hits;
}

struct TrainLoraAdapter : LinearAdapter, TrainableAdapter {
  std::shared_ptr<LoraLayer> layer;
  std::shared_ptr<const LoraTraining::State> state;
  uint64_t layer_id = 0;
  std::string key_a, key_b, key_m;
  const Linear* base = nullptr;  // the Linear this adapter sits on (DoRA reads its weight and bias)
  // On a GPU model: the trainable masters A F32 [r, I], B F32 [O, r] (and DoRA's m F32 [O]) live on the
  // device (registered in TrainableParams, updated there by the optimizer); layer->A/B/m are refreshed from
  // them by sync_to_host. a_bf, b_bf: their BF16 copies that the GEMMs read, and with dropout at_bf = Aᵀ
  // [I, r] for lora_up_dx (train/lora_fused.h); refresh_gpu after each update.
  Tensor a_dev, b_dev, m_dev, a_bf, b_bf, at_bf;
  // DoRA: norm = ‖W + s·B·A‖_row, d = m / norm and d − 1, F32 [O] on the model's device, from the masters
  // (refresh_dora after each update; constant within a step, as PEFT detaches the norm).
  Tensor norm, d, d_minus_1;

  bool dropping() const { return state->training && state->dropout > 0; }
  bool on_gpu() const { return a_dev.defined(); }
  bool dora() const { return layer->magnitude.defined(); }
  // The dropout mask of this module's input [·, I] in this micro-batch (lora_fused.h): a function of an
  // element's place in the step's whole input; a Block running rows [r0, r0 + n) only (train/row_offset.h)
  // gets the mask of those rows.
  LoraMask mask(int64_t I) const {
    const uint64_t seed = lora_mask_mix(state->seed ^ lora_mask_mix(state->counter * 1000003ull + layer_id));
    return lora_mask(seed, activation_row_offset(), I, state->dropout);
  }
  const Tensor& master_a() const { return on_gpu() ? a_dev : layer->A; }
  const Tensor& master_b() const { return on_gpu() ? b_dev : layer->B; }
  const Tensor& master_m() const { return on_gpu() ? m_dev : layer->magnitude; }
  const Tensor& gemm_a() const { return on_gpu() ? a_bf : layer->A; }  // what the GEMMs multiply with
  const Tensor& gemm_b() const { return on_gpu() ? b_bf : layer->B; }
  const Tensor* base_bias() const { return base->bias.defined() ? &base->bias : nullptr; }

  // The key of this adapter's mid for input x in the current pass (pass 0: nothing is kept).
  MidKey mid_key(const Tensor& x) const {
    MidKey k;
    k.adapter = this;
    k.pass = g_mid_reuse && !dora() ? pass_id() : 0;
    k.generation = state->generation;
    k.row0 = activation_row_offset();
    k.I = x.size(-1);
    k.N = x.numel() / std::max<int64_t>(k.I, 1);
    k.state = state.get();
    k.drop = dropping();
    k.mask = mask(k.I);
    return k;
  }
  // The kept mid of key k (undefined when there is none); take: forget it.
  static Tensor find_mid(const MidKey& k, bool take) {
    if (k.pass == 0) return Tensor();
    std::vector<MidEntry>& c = mid_cache();
    for (size_t i = 0; i < c.size(); i++)
      if (c[i].key == k) {
        Tensor t = c[i].mid;
        if (take) {
          c.erase(c.begin() + (ptrdiff_t)i);
          g_mid_hits++;
        }
        return t;
      }
    return Tensor();
  }
  static void keep_mid(const MidKey& k, const Tensor& mid) {
    if (k.pass == 0) return;
    std::vector<MidEntry>& c = mid_cache();
    for (size_t i = c.size(); i-- > 0;)
      if (c[i].key == k || (c[i].key.state == k.state && c[i].key.generation != k.generation))
        c.erase(c.begin() + (ptrdiff_t)i);
    c.push_back({k, mid});
  }
  // Whether this adapter's forward may take its mid from lora_forward_group: every pass on the GPU (with
  // dropout; without, cuBLASLt's separate products are faster), only the backward's on the CPU (the forward
  // there is LoraLayer::apply; the kept mid serves the backward).
  bool groups() const {
    return g_mid_reuse && !dora() && pass_id() != 0 && (on_gpu() ? dropping() : pass_for_backward());
  }

  // The LoRA input xd [N, I]: x through the dropout mask when training with dropout (scaled by 1/(1-p)).
  // GPU: BF16; CPU: F32.
  Tensor lora_input(const Tensor& x) const {
    const int64_t I = x.size(-1), N = x.numel() / I;
    if (!on_gpu()) return dropping() ? dropped(x.reshape({N, I})) : x.reshape({N, I});
    if (!dropping() && x.dtype() == DType::BF16) return x.reshape({N, I});
    Tensor out = Tensor::empty({N, I}, DType::BF16, x.device());
    if (!dropping()) {
      convert(out, x.reshape({N, I}));
      return out;
    }
#ifdef QTUNE_HAVE_CUDA
    lora_dropout_cuda(out, x, mask(I));
#endif
    return out;
  }

  // dx += mask ⊙ t / (1 − p): the backward of lora_input's dropout (t is overwritten on the GPU).
  void add_through_mask(Tensor& dx2, Tensor& t) const {
    if (on_gpu()) {
#ifdef QTUNE_HAVE_CUDA
      lora_dropout_cuda(t, t, mask(t.size(-1)));
#endif
      add_inplace(dx2, t);
      return;
    }
    add_inplace(dx2, dropped(t));
  }

  // x [N, I] as BF16 (the activations already are; otherwise a converted copy).
  static Tensor bf16_rows(const Tensor& x) {
    const int64_t I = x.size(-1), N = x.numel() / I;
    if (x.dtype() == DType::BF16) return x.reshape({N, I});
    Tensor out = Tensor::empty({N, I}, DType::BF16, x.device());
    convert(out, x.reshape({N, I}));
    return out;
  }

  // GPU forward: out[N, O] += scale·((m ⊙ x)·Aᵀ)·Bᵀ with BF16 copies of A and B (f32 accumulation, one
  // rounding of the sum into out by the second GEMM's beta = 1). With dropout the mask is applied as x is
  // read (lora_down); without, the product is cuBLASLt's (faster on unmasked skinny shapes, bench/NOTES.md).
  void apply_gpu(Tensor& out, const Tensor& x) const {
    QT_PROFILE("lora.fwd (in linear)");
    const int64_t O = out.size(-1), N = out.numel() / O;
    const MidKey key = mid_key(x);
    // [N, r]: from lora_forward_group, else computed here; kept for the backward of a recompute's pass
    Tensor mid = find_mid(key, !pass_for_backward());
    if (!mid.defined()) {
      Tensor xb = bf16_rows(x);  // [N, I]
      mid = Tensor::empty({N, layer->r}, DType::BF16, x.device());
      if (dropping()) {
        lora_down(mid, xb, a_bf, 1.0f, &key.mask);
      } else {
        matmul(mid, xb, a_bf, false, true);
      }
      if (pass_for_backward()) keep_mid(key, mid);
    }
    Tensor o2 = out.reshape({N, O});
    matmul(o2, mid, b_bf, false, true, (float)layer->scale, 1.0f);
  }

  // GPU backward, the CPU formulas below with BF16 GEMM inputs and F32 gradients. The products that read x
  // (h, dA, dx) go through the masked kernels of lora_fused.h when training with dropout (no dropped copy of
  // x, the mask applied on dh·A before it is added to dx); the ones that read dy (dh, dB) and all of them
  // without dropout are cuBLASLt's.
  void backward_gpu(Tensor* dx, const Tensor& dy, const Tensor& x, TrainableParams* params) const {
    QT_PROFILE("lora.bwd (in linear)");
    const int64_t I = x.size(-1), N = x.numel() / I, O = dy.size(-1), r = layer->r;
    const float s = (float)layer->scale;
    const Device dev = x.device();
    const bool drop = dropping();
    const MidKey key = mid_key(x);
    const LoraMask& m = key.mask;
    Tensor xb = bf16_rows(x), dy2 = dy.reshape({N, O});  // [N, I], [N, O]
    Tensor h = find_mid(key, true), dh = Tensor::empty({N, r}, DType::BF16, dev);
    if (!h.defined()) {  // h = (m ⊙ x)·Aᵀ, unless this pass's recompute kept it
      h = Tensor::empty({N, r}, DType::BF16, dev);
      if (drop)
        lora_down(h, xb, a_bf, 1.0f, &m);
      else
        matmul(h, xb, a_bf, false, true);
    }
    matmul(dh, dy2, b_bf, false, false, s);  // dh = s·dy·B
    if (params) {
      if (Tensor* gb = params->grad(key_b)) matmul(*gb, dy2, h, true, false, s, 1.0f);  // dB += s·dyᵀ·h
      if (Tensor* ga = params->grad(key_a)) {  // dA += dhᵀ·(m ⊙ x)
        if (drop)
          lora_down_grad(*ga, dh, xb, 1.0f, &m, false);
        else
          matmul(*ga, dh, xb, true, false, 1.0f, 1.0f);
      }
    }
    if (!dx) return;
    Tensor dx2 = dx->reshape({N, I});
    if (drop)
      lora_up_dx(dx2, dh, at_bf, &m);  // dx += m ⊙ (dh·A)
    else
      matmul(dx2, dh, a_bf, false, false, 1.0f, 1.0f);
  }

  // GPU: the BF16 GEMM copies of the f32 masters (after each optimizer step).
  void refresh_gpu() {
    if (!a_bf.defined()) {
      a_bf = Tensor::empty(a_dev.shape(), DType::BF16, a_dev.device());
      b_bf = Tensor::empty(b_dev.shape(), DType::BF16, b_dev.device());
      if (state->dropout > 0 && !dora())
        at_bf = Tensor::empty({a_dev.size(1), a_dev.size(0)}, DType::BF16, a_dev.device());
    }
    convert(a_bf, a_dev);
    convert(b_bf, b_dev);
    if (at_bf.defined()) transpose_into(at_bf, a_dev);
  }

  // DoRA: the detached row norm and scales from the current masters (after each optimizer step).
  void refresh_dora() {
    if (!dora()) return;
    QT_PROFILE("dora.norm");
    const Device dev = master_a().device();
    const int64_t O = master_b().size(0);
    if (!norm.defined()) {
      norm = Tensor::empty({O}, DType::F32, dev);
      d = Tensor::empty({O}, DType::F32, dev);
      d_minus_1 = Tensor::empty({O}, DType::F32, dev);
    }
    dora_weight_norm(norm, dora_dense_weight(*base), master_a(), master_b(), (float)layer->scale);
    dora_scale(d, master_m(), norm);
    dora_scale(d_minus_1, master_m(), norm, -1.0f);
  }

  // x with dropout applied (scaled by 1/(1-p)), [N, I].
  Tensor dropped(const Tensor& x) const {
    Tensor d = Tensor::empty(x.shape(), DType::F32);
    const float* src = x.data<float>();
    float* dst = d.data<float>();
    const LoraMask m = mask(x.size(-1));
    const int64_t n = x.numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) dst[i] = lora_mask_keeps(m, (uint64_t)i) ? src[i] * m.keep : 0.0f;
    return d;
  }

  void apply(Tensor& out, const Tensor& x) const override {
    if (dora()) return dora_apply(out, x);
    if (on_gpu()) return apply_gpu(out, x);
    if (groups()) {  // the CPU keeps mid = (m ⊙ x)·Aᵀ for the backward of this recompute (as the backward
                     // computes it)
      const MidKey key = mid_key(x);
      if (!find_mid(key, false).defined()) {
        Tensor mid = Tensor::empty({key.N, layer->r}, DType::F32);
        lora_down(mid, x, layer->A, 1.0f, dropping() ? &key.mask : nullptr);
        keep_mid(key, mid);
      }
    }
    if (!dropping()) {
      layer->apply(out, x);
      return;
    }
    layer->apply(out, dropped(x));
  }

  void backward(Tensor* dx, const Tensor& dy, const Tensor& x, TrainableParams* params) const override {
    if (on_gpu()) return backward_gpu(dx, dy, x, params);
    const int64_t N = x.numel() / x.size(-1), I = x.size(-1), O = dy.size(-1), r = layer->r;
    const float s = (float)layer->scale;
    Tensor xd = lora_input(x);                // [N, I]
    const float* A = layer->A.data<float>();  // [r, I]
    const float* B = layer->B.data<float>();  // [O, r]
    // h = xd·Aᵀ [N, r] (kept by this pass's recompute, or computed); dh = s·dy·B [N, r]
    Tensor ht = find_mid(mid_key(x), true);
    if (!ht.defined()) {
      ht = Tensor::empty({N, r}, DType::F32);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, r, I, 1.0f, xd.data<float>(), I, A, I, 0.0f,
                  ht.data<float>(), r);
    }
    const float* h = ht.data<float>();
    std::vector<float> dh(N * r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, r, O, s, dy.data<float>(), O, B, r, 0.0f,
                dh.data(), r);
    if (params) {
      if (Tensor* gb = params->grad(key_b))  // dB[O, r] += s·dyᵀ·h
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, r, N, s, dy.data<float>(), O, h, r, 1.0f,
                    gb->data<float>(), r);
      if (Tensor* ga = params->grad(key_a))  // dA[r, I] += dhᵀ·xd
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, I, N, 1.0f, dh.data(), r, xd.data<float>(), I,
                    1.0f, ga->data<float>(), I);
    }
    if (!dx) return;
    if (!dropping()) {  // dx[N, I] += dh·A
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, I, r, 1.0f, dh.data(), r, A, I, 1.0f,
                  dx->data<float>(), I);
      return;
    }
    Tensor dx2 = dx->reshape({N, I});
    Tensor t = Tensor::empty({N, I}, DType::F32);  // dh·A, then through the mask
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, I, r, 1.0f, dh.data(), r, A, I, 0.0f,
                t.data<float>(), I);
    add_through_mask(dx2, t);
  }

  // DoRA forward (PEFT's DoraLinearLayer, dora_ops.h): out already holds x·Wᵀ + b;
  //   out += (d − 1) ⊙ (xd·Wᵀ) + d ⊙ s·(xd·Aᵀ)·Bᵀ
  // where without dropout xd = x and xd·Wᵀ is out's own base part. The LoRA term u is F32.
  void dora_apply(Tensor& out, const Tensor& x) const {
    QT_PROFILE("dora.fwd (in linear)");
    const int64_t O = out.size(-1), N = out.numel() / O;
    const Device dev = x.device();
    Tensor xd = lora_input(x);  // [N, I]
    Tensor mid = Tensor::empty({N, layer->r}, xd.dtype(), dev);
    matmul(mid, xd, gemm_a(), false, true);  // xd·Aᵀ [N, r]
    Tensor u = Tensor::empty({N, O}, DType::F32, dev);
    matmul(u, mid, gemm_b(), false, true, (float)layer->scale);  // s·(xd·Aᵀ)·Bᵀ [N, O]
    Tensor o2 = out.reshape({N, O});
    if (!dropping()) return dora_combine(o2, o2, u, d, base_bias());
    Tensor t = Tensor::empty({N, O}, out.dtype(), dev);  // xd·Wᵀ + b
    base->forward_base(t, xd);
    dora_combine(o2, t, u, d, base_bias());
  }

  // DoRA takes over its Linear's backward. With g = d ⊙ dy, h = xd·Aᵀ, dh = s·g·B:
  //   dB += s·gᵀ·h,  dA += dhᵀ·xd,  dm += Σ_n dy ⊙ (xd·Wᵀ + s·h·Bᵀ) / norm,
  //   dx += dy·W + mask ⊙ (((d − 1) ⊙ dy)·W + dh·A)   (no dropout: dx += g·W + dh·A).
  bool takes_over_backward() const override {
    return dora();
  }
  bool backward_linear(const Linear& lin, Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy,
                       const Tensor& x, TrainableParams* params) const override {
    if (!dora()) return false;
    QT_PROFILE("dora.bwd (in linear)");
    if (dw)
      throw_error(ErrorKind::Unsupported, "linear_backward: '", lin.name,
                  "': the base weight under a DoRA adapter is frozen");
    const int64_t I = x.size(-1), N = x.numel() / I, O = dy.size(-1), r = layer->r;
    const float s = (float)layer->scale;
    const Device dev = x.device();
    Tensor xd = lora_input(x);  // [N, I]
    const DType act = xd.dtype();
    Tensor dy2 = dy.reshape({N, O});
    if (db) scale_columns_backward(nullptr, db, dy2, nullptr, nullptr);  // the bias sits outside the scaling
    Tensor h = Tensor::empty({N, r}, act, dev), dh = Tensor::empty({N, r}, act, dev);
    Tensor g = Tensor::empty({N, O}, dy.dtype(), dev);
    matmul(h, xd, gemm_a(), false, true);      // h = xd·Aᵀ
    scale_columns(g, dy2, d);                  // g = d ⊙ dy
    matmul(dh, g, gemm_b(), false, false, s);  // dh = s·g·B
    if (params) {
      if (Tensor* gb = params->grad(key_b)) matmul(*gb, g, h, true, false, s, 1.0f);
      if (Tensor* ga = params->grad(key_a)) matmul(*ga, dh, xd, true, false, 1.0f, 1.0f);
      if (Tensor* gm = params->grad(key_m)) {
        Tensor p = Tensor::empty({O, r}, DType::F32, dev);  // dyᵀ·h
        matmul(p, dy2, h, true, false);
        Tensor y = Tensor::empty({N, O}, dy.dtype(), dev);  // xd·Wᵀ + b
        lin.forward_base(y, xd);
        Tensor cy = Tensor::zeros({O}, DType::F32, dev), cdy;
        scale_columns_backward(nullptr, &cy, dy2, &y, nullptr);
        if (base_bias()) {
          cdy = Tensor::zeros({O}, DType::F32, dev);
          scale_columns_backward(nullptr, &cdy, dy2, nullptr, nullptr);
        }
        dora_magnitude_grad(*gm, cy, base_bias() ? &cdy : nullptr, base_bias(), p, master_b(), s, norm);
      }
    }
    if (!dx) return true;
    Tensor dx2 = dx->reshape({N, I});
    if (!dropping()) {
      linear_backward_base(lin, &dx2, nullptr, nullptr, g, x);  // dx += g·W
      matmul(dx2, dh, gemm_a(), false, false, 1.0f, 1.0f);      // dx += dh·A
      return true;
    }
    linear_backward_base(lin, &dx2, nullptr, nullptr, dy2, x);  // the base path: dx += dy·W
    Tensor t = Tensor::zeros({N, I}, act, dev);
    Tensor g1 = Tensor::empty({N, O}, dy.dtype(), dev);
    scale_columns(g1, dy2, d_minus_1);
    linear_backward_base(lin, &t, nullptr, nullptr, g1, xd);  // ((d − 1) ⊙ dy)·W
    matmul(t, dh, gemm_a(), false, false, 1.0f, 1.0f);        // + dh·A
    add_through_mask(dx2, t);
    return true;
  }
};

void lora_forward_group(std::initializer_list<const Linear*> linears, const Tensor& x) {
  const TrainLoraAdapter* group[kLoraGroupMax];
  MidKey keys[kLoraGroupMax];
  int n = 0;
  for (const Linear* l : linears) {  // LoRA modules of one rank without a kept mid (a recompute has them)
    auto* a = dynamic_cast<const TrainLoraAdapter*>(l->adapter.get());
    if (!a || !a->groups() || (n > 0 && a->layer->r != group[0]->layer->r) || n == kLoraGroupMax) continue;
    keys[n] = a->mid_key(x);
    if (!TrainLoraAdapter::find_mid(keys[n], false).defined()) group[n++] = a;
  }
  if (n < 2) return;  // one alone: its forward computes it
  QT_PROFILE("lora.fwd (in linear)");
  const int64_t I = x.size(-1), N = x.numel() / std::max<int64_t>(I, 1);
  const bool gpu = group[0]->on_gpu();
  Tensor xr = gpu ? TrainLoraAdapter::bf16_rows(x) : x.reshape({N, I});
  Tensor mids[kLoraGroupMax];
  Tensor* outs[kLoraGroupMax];
  const Tensor* ws[kLoraGroupMax];
  const LoraMask* masks[kLoraGroupMax];
  for (int i = 0; i < n; i++) {
    mids[i] = Tensor::empty({N, group[i]->layer->r}, gpu ? DType::BF16 : DType::F32, x.device());
    outs[i] = &mids[i];
    ws[i] = &group[i]->gemm_a();
    masks[i] = keys[i].drop ? &keys[i].mask : nullptr;
  }
  lora_down_group(outs, xr, ws, masks, n);  // [N, r] each
  for (int i = 0; i < n; i++) TrainLoraAdapter::keep_mid(keys[i], mids[i]);
}

LoraTraining::LoraTraining(LlamaModel& model, LoraModel& lora, TrainableParams& params, uint64_t seed,
                           double dropout)
    : model_(model), lora_(lora), state_(std::make_shared<State>()) {
  state_->seed = seed;
  state_->dropout = dropout;
  std::map<std::string, Linear*> by_name;
  for (auto& [name, lin] : linear_modules(model)) by_name[name] = lin;
  const std::string prefix = "base_model.model.";
  uint64_t id = 0;
  for (const auto& l : lora.layers()) {
    auto it = by_name.find(l->module);
    if (it == by_name.end())
      throw_error(ErrorKind::Internal, "LoRA module ", l->module, " is not in the model");
    auto a = std::make_shared<TrainLoraAdapter>();
    a->layer = l;
    a->state = state_;
    a->layer_id = id++;
    a->key_a = prefix + l->module + ".lora_A.weight";
    a->key_b = prefix + l->module + ".lora_B.weight";
    a->key_m = prefix + l->module + ".lora_magnitude_vector";
    a->base = it->second;
    if (model.device() != Device::CPU) {
      a->a_dev = l->A.clone().to(model.device());
      a->b_dev = l->B.clone().to(model.device());
      if (l->magnitude.defined()) a->m_dev = l->magnitude.clone().to(model.device());
      a->refresh_gpu();
    }
    a->refresh_dora();
    slots_.push_back({it->second, it->second->adapter, a, a});
    it->second->adapter = a;
  }
  size_t registered = 0;
  for (const Slot& sl : slots_) {
    const LoraLayer& l = *sl.lora->layer;
    registered += l.magnitude.defined() ? 3 : 2;
    params.add(sl.lora->key_a, sl.lora->on_gpu() ? sl.lora->a_dev : l.A);
    params.add(sl.lora->key_b, sl.lora->on_gpu() ? sl.lora->b_dev : l.B);
    if (l.magnitude.defined()) params.add(sl.lora->key_m, sl.lora->on_gpu() ? sl.lora->m_dev : l.magnitude);
  }
  for (const LoraModel::ExtraRef& x : lora.extras()) {
    if (x.param_name == "lm_head.weight" && model.config().tie_word_embeddings)
      throw_error(ErrorKind::Unsupported,
                  "training lm_head in modules_to_save of a model with tied embeddings is not supported (its "
                  "gradient goes to model.embed_tokens); save model.embed_tokens instead");
    ExtraSlot e{Tensor(), x.master, x.slot};
    if (model.device() != Device::CPU) e.device_master = x.master.to(model.device());
    params.add(x.param_name, e.device_master.defined() ? e.device_master : x.master);
    extras_.push_back(e);
    ++registered;
  }
  QT_CHECK(lora.trainable().size() == registered, "LoRA training registered ", registered, " of ",
           lora.trainable().size(), " tensors");
}

LoraTraining::~LoraTraining() {
  try {
    sync_to_host();
  } catch (...) {  // a failing GPU must not turn unwinding into std::terminate
  }
  for (Slot& s : slots_) s.linear->adapter = s.original;
  mid_cache().clear();
}

void LoraTraining::refresh() {
  state_->generation++;                  // kept mids of the old A are stale
  if (model_.device() != Device::CPU) {  // the GPU forward reads BF16 copies of the device masters
    for (ExtraSlot& e : extras_) convert(*e.slot, e.device_master);  // biases first: DoRA reads them
    for (Slot& s : slots_) {
      s.lora->refresh_gpu();
      s.lora->refresh_dora();
    }
    return;
  }
  lora_.refresh();
  for (Slot& s : slots_) {
    s.lora->refresh_dora();
    s.linear->adapter = s.training;
  }
}

void LoraTraining::sync_to_host() {
  state_->generation++;
  if (model_.device() == Device::CPU) return;
  for (Slot& s : slots_) {
    s.lora->layer->A.copy_from(s.lora->a_dev);
    s.lora->layer->B.copy_from(s.lora->b_dev);
    if (s.lora->m_dev.defined()) s.lora->layer->magnitude.copy_from(s.lora->m_dev);
  }
  for (ExtraSlot& e : extras_) e.host_master.copy_from(e.device_master);
  lora_.refresh();
  for (Slot& s : slots_) s.linear->adapter = s.training;
}

void LoraTraining::set_training(bool on) {
  state_->training = on;
  state_->generation++;
}
void LoraTraining::set_step(uint64_t counter) {
  state_->counter = counter;
  state_->generation++;
}

}  // namespace qtune
