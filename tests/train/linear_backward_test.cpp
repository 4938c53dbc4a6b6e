// Linear backward through dense, NF4/FP4 (double quant, bf16 compute) and LLM.int8 weights: the tile-wise
// dequantization equals the forward's dense weight exactly, dx equals the f64 product with it, several
// tiles; weight gradients of a quantized weight are refused; adapters backpropagate through the
// TrainableAdapter interface (checked against a model with the adapter merged into the weight); a
// 4-bit model's gradients equal those of a dense model holding the dequantized weights; overwrite_dx
// gives the accumulated result from an unread (NaN) buffer.
#include "train/linear_backward.h"

#include <gtest/gtest.h>

#include <random>

#include "model/llama_model.h"
#include "model/quant_linear.h"
#include "ops/ops.h"
#include "quant/int8.h"
#include "train/causal_lm.h"
#include "train_test_util.h"

using namespace qtune;
using namespace qtune_test;

namespace {

Tensor randn(const Shape& s, float std = 1.0f, uint64_t seed = 1) {
  std::mt19937_64 r(seed);
  std::normal_distribution<float> d(0.0f, std);
  std::vector<float> v(shape_numel(s));
  for (float& x : v) x = d(r);
  return Tensor::from_f32(v, s);
}

// dy[N, O]·W[O, I] in f64.
std::vector<float> dx_f64(const Tensor& dy, const Tensor& w) {
  int64_t O = w.size(0), I = w.size(1), N = dy.numel() / O;
  std::vector<float> g = dy.to_f32_vector(), wv = w.to_f32_vector(), out(N * I);
  for (int64_t n = 0; n < N; n++)
    for (int64_t i = 0; i < I; i++) {
      double s = 0;
      for (int64_t o = 0; o < O; o++) s += (double)g[n * O + o] * wv[o * I + i];
      out[n * I + i] = (float)s;
    }
  return out;
}

void check_quantized(const Linear& lin, const Tensor& dense_w, const char* what) {
  int64_t O = lin.out_features(), I = lin.in_features(), N = 3;
  std::vector<float> rows(O * I);
  dequant_weight_rows(lin, 0, O, rows.data());
  EXPECT_EQ(rows, dense_w.to_f32_vector()) << what;  // the forward's weight, bit for bit
  Tensor dy = randn({N, O}, 1.0f, 7), x = randn({N, I}, 1.0f, 8);
  Tensor dx = Tensor::zeros({N, I}, DType::F32);
  linear_backward(lin, &dx, nullptr, nullptr, dy, x);
  double e = rel_err(dx.to_f32_vector(), dx_f64(dy, dense_w));
  std::printf("  %-34s dx rel err vs f64 %.3g\n", what, e);
  EXPECT_LT(e, 1e-5) << what;
  // A trained bias of a quantized Linear (LoRA bias="all"): db += Σ_n dy.
  Tensor db = Tensor::zeros({O}, DType::F32);
  linear_backward(lin, nullptr, nullptr, &db, dy, x);
  std::vector<float> db_ref(O, 0.0f);
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < O; o++) db_ref[o] += dy.data<float>()[n * O + o];  // N = 3 rows: exact enough
  EXPECT_LT(rel_err(db.to_f32_vector(), db_ref), 1e-6) << what;
  Tensor dw = Tensor::zeros({O, I}, DType::F32);
  expect_error([&] { linear_backward(lin, &dx, &dw, nullptr, dy, x); }, ErrorKind::Unsupported,
               {"'test.proj'", "quantized weight", "frozen"});
  // overwrite_dx: the same dx from a buffer of garbage (NaN: never read).
  Tensor dx_over = Tensor::from_f32(std::vector<float>(N * I, std::nanf("")), {N, I});
  linear_backward(lin, &dx_over, nullptr, nullptr, dy, x, nullptr, true);
  EXPECT_EQ(dx_over.to_f32_vector(), dx.to_f32_vector()) << what << " (overwrite_dx)";
}

}  // namespace

TEST(LinearBackward, Quant4ManyTiles) {
  // I = 8200: (1 << 20) / I = 127 rows per tile, so 300 rows take 3 tiles (the last partial); rows span
  // 64-element blocks unevenly (8200 is not a multiple of 64).
  int64_t O = 300, I = 8200;
  Tensor w = randn({O, I}, 0.05f, 3);
  for (auto [qt, dq, cd, what] : {std::tuple{QuantType::NF4, true, DType::F32, "NF4 + double quant"},
                                  std::tuple{QuantType::FP4, false, DType::BF16, "FP4, bf16 compute"}}) {
    Linear lin;
    lin.name = "test.proj";
    lin.q4 = quantize_linear_4bit(w, qt, 64, dq, cd);
    check_quantized(lin, quant4_linear_dense(*lin.q4), what);
  }
}

TEST(LinearBackward, Int8) {
  Tensor w = randn({40, 72}, 0.1f, 4);
  Linear lin;
  lin.name = "test.proj";
  lin.q8 = quantize_linear_8bit(w, 6.0f);
  check_quantized(lin, int8_vectorwise_dequant(lin.q8->w), "LLM.int8");
}

namespace {

// out += x·Mᵀ: a full-rank "adapter" whose gradient must equal the weight gradient of the merged model.
struct DenseAdapter : LinearAdapter, TrainableAdapter {
  std::string name;
  Tensor m;  // [O, I]
  void apply(Tensor& out, const Tensor& x) const override {
    Tensor t = Tensor::empty(out.shape(), DType::F32);
    linear_forward(t, x, m);
    add_inplace(t, out);
    out.copy_from(t);
  }
  void backward(Tensor* dx, const Tensor& dy, const Tensor& x, TrainableParams* params) const override {
    qtune::linear_backward(dx, params ? params->grad(name) : nullptr, nullptr, dy, x, m);
  }
};

struct ForwardOnlyAdapter : LinearAdapter {
  void apply(Tensor&, const Tensor&) const override {}
};

}  // namespace

TEST(LinearBackward, AdapterGradientEqualsMergedWeightGradient) {
  const std::string dir = model_fixture("llama");
  LlamaModel with = LlamaModel::load(dir), merged = LlamaModel::load(dir);
  Linear& q = with.mutable_layers()[1].q;
  auto ad = std::make_shared<DenseAdapter>();
  ad->name = "adapter.q.M";
  ad->m = randn(q.weight.shape(), 0.05f, 11);
  q.adapter = ad;
  Linear& qm = merged.mutable_layers()[1].q;
  Tensor wsum = qm.weight.clone();
  add_inplace(wsum, ad->m);
  qm.weight = wsum;
  TrainableParams pa, pm;
  register_full_finetune(pa, with);
  pa.add(ad->name, ad->m);
  register_full_finetune(pm, merged);
  Tensor ids = Tensor::from_i32({3, 70, 9, 200, 5, 5, 31}, {1, 7});
  Tensor labels = Tensor::from_i32({70, 9, 200, 5, -100, 31, 2}, {1, 7});
  LossSum ra = causal_lm_forward_backward(with, ids, labels, &pa, {});
  LossSum rm = causal_lm_forward_backward(merged, ids, labels, &pm, {});
  EXPECT_NEAR(ra.loss, rm.loss, 1e-5 * rm.loss);
  for (const auto& e : pm.entries())
    EXPECT_LT(rel_err(pa.at(e.name).grad.to_f32_vector(), e.grad.to_f32_vector()), 1e-5) << e.name;
  EXPECT_LT(rel_err(pa.at(ad->name).grad.to_f32_vector(),
                    pm.at("model.layers.1.self_attn.q_proj.weight").grad.to_f32_vector()),
            1e-5);
  // An adapter on lm_head (not in the chunked loss yet) and one with no backward are refused.
  with.mutable_lm_head().adapter = std::make_shared<ForwardOnlyAdapter>();
  expect_error([&] { causal_lm_forward_backward(with, ids, labels, &pa, {}); }, ErrorKind::Unsupported,
               {"adapter on lm_head"});
  with.mutable_lm_head().adapter = nullptr;
  with.mutable_layers()[0].down.adapter = std::make_shared<ForwardOnlyAdapter>();
  expect_error([&] { causal_lm_forward_backward(with, ids, labels, &pa, {}); }, ErrorKind::Unsupported,
               {"model.layers.0.mlp.down_proj", "TrainableAdapter"});
}

TEST(LinearBackward, FourBitModelEqualsDequantizedDenseModel) {
  const std::string dir = model_fixture("llama");
  LoadOptions o;
  o.load_in_4bit = true;
  o.double_quant = true;
  LlamaModel q4 = LlamaModel::load(dir, Device::CPU, o), dense = LlamaModel::load(dir);
  for (size_t l = 0; l < dense.layers().size(); l++) {
    LlamaLayer& d = dense.mutable_layers()[l];
    const LlamaLayer& s = q4.layers()[l];
    for (auto [dl, sl] : {std::pair{&d.q, &s.q},
                          {&d.k, &s.k},
                          {&d.v, &s.v},
                          {&d.o, &s.o},
                          {&d.gate, &s.gate},
                          {&d.up, &s.up},
                          {&d.down, &s.down}}) {
      ASSERT_TRUE(sl->q4) << sl->name;
      dl->weight = quant4_linear_dense(*sl->q4);
    }
  }
  // QLoRA-style: the quantized Linears frozen; the norms and the embedding train.
  auto reg = [](TrainableParams& p, const LlamaModel& m) {
    p.add("model.embed_tokens.weight", m.embed_tokens());
    p.add("model.norm.weight", m.final_norm());
    for (size_t l = 0; l < m.layers().size(); l++) {
      std::string pre = "model.layers." + std::to_string(l);
      p.add(pre + ".input_layernorm.weight", m.layers()[l].input_norm);
      p.add(pre + ".post_attention_layernorm.weight", m.layers()[l].post_norm);
    }
  };
  TrainableParams pq, pd;
  reg(pq, q4);
  reg(pd, dense);
  Tensor ids = Tensor::from_i32({1, 2, 3, 40, 50, 60, 70, 80}, {2, 4});
  Tensor labels = Tensor::from_i32({2, 3, 40, -100, 60, 70, 80, -100}, {2, 4});
  StepOptions ck;
  ck.gradient_checkpointing = true;
  LossSum rq = causal_lm_forward_backward(q4, ids, labels, &pq, ck);
  LossSum rd = causal_lm_forward_backward(dense, ids, labels, &pd, {});
  EXPECT_NEAR(rq.loss, rd.loss, 1e-5 * rd.loss);
  double worst = 0;
  for (const auto& e : pd.entries()) {
    double err = rel_err(pq.at(e.name).grad.to_f32_vector(), e.grad.to_f32_vector());
    worst = std::max(worst, err);
    EXPECT_LT(err, 1e-5) << e.name;
  }
  std::printf("  4-bit model vs dequantized dense: worst grad rel err %.3g\n", worst);
  TrainableParams full;
  expect_error([&] { register_full_finetune(full, q4); }, ErrorKind::Unsupported,
               {"model.layers.0.self_attn.q_proj", "quantized weight"});
}
