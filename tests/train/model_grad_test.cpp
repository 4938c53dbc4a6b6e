// Whole-model loss and gradients against PyTorch autograd (tests/fixtures/backward, made by
// tools/make_backward_fixtures.py from the tiny models of tests/fixtures/model): the summed loss and
// count, and the gradient of every parameter under full fine-tuning (relative norm error ≤ 1e-4).
// Gradient checkpointing on/off and the loss chunk size give the same gradients; packed sequences
// equal separate rows; loss-only evaluation equals the training loss.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "io/safetensors.h"
#include "model/llama_model.h"
#include "ops/ops.h"
#include "train/causal_lm.h"
#include "train_test_util.h"

using namespace qtune;
using namespace qtune_test;

namespace {

struct Fixture {
  std::shared_ptr<SafetensorsFile> file;
  nlohmann::json meta;
};

Fixture load_fixture(const std::string& name) {
  Fixture f;
  f.file = SafetensorsFile::open(backward_fixture(name + ".safetensors"));
  std::ifstream in(backward_fixture(name + ".json"));
  f.meta = nlohmann::json::parse(in);
  return f;
}

// Runs the fixture's batch through qtune with full fine-tuning; returns the params (gradients filled).
LossSum run(const LlamaModel& m, const Fixture& fx, TrainableParams& p, const StepOptions& opts) {
  return causal_lm_forward_backward(m, fx.file->get("ids"), fx.file->get("labels"), &p, opts);
}

void compare_with_torch(const std::string& name) {
  LlamaModel m = LlamaModel::load(model_fixture(name));
  Fixture fx = load_fixture(name);
  TrainableParams p;
  register_full_finetune(p, m);
  int64_t count = fx.meta["count"];
  StepOptions opts;
  opts.grad_scale = 1.0f / count;
  LossSum r = run(m, fx, p, opts);
  double want = fx.meta["loss_sum"];
  std::printf("%s: loss_sum %.9g (torch %.9g), count %ld\n", name.c_str(), r.loss, want, (long)r.count);
  EXPECT_EQ(r.count, count);
  EXPECT_LT(std::fabs(r.loss - want) / want, 1e-5);
  // Every torch parameter has a qtune gradient and vice versa.
  std::set<std::string> torch_names, ours;
  for (const TensorInfo& t : fx.file->tensors())
    if (t.name.rfind("grad.", 0) == 0) torch_names.insert(t.name.substr(5));
  for (const auto& e : p.entries()) ours.insert(e.name);
  EXPECT_EQ(ours, torch_names);
  double worst = 0;
  for (const auto& e : p.entries()) {
    if (!torch_names.count(e.name)) continue;
    double err = rel_err(e.grad.to_f32_vector(), fx.file->get("grad." + e.name).to_f32_vector());
    worst = std::max(worst, err);
    EXPECT_LT(err, 1e-4) << e.name;
  }
  std::printf("%s: %zu gradients, worst relative norm error %.3g\n", name.c_str(), p.size(), worst);
}

}  // namespace

TEST(ModelGrad, LlamaGQAMatchesTorch) {
  compare_with_torch("llama");  // 2 query heads per kv head, llama3 rope scaling, untied head
}

TEST(ModelGrad, LlamaBiasTiedMQAMatchesTorch) {
  compare_with_torch("llama_bias");  // q/k/v/o and MLP biases, 1 kv head, tied embeddings
}

TEST(ModelGrad, CheckpointingAndChunkingGiveTheSameGradients) {
  LlamaModel m = LlamaModel::load(model_fixture("llama"));
  Fixture fx = load_fixture("llama");
  TrainableParams a, b, c, d, e;
  register_full_finetune(a, m);
  register_full_finetune(b, m);
  register_full_finetune(c, m);
  register_full_finetune(d, m);
  register_full_finetune(e, m);
  StepOptions off, on, chunked, tokens, kept;
  on.gradient_checkpointing = true;
  kept.gradient_checkpointing = true;  // the recompute reuses the kept attention outputs
  kept.keep_attention = 1;
  chunked.loss_chunk_rows = 5;
  tokens.gradient_checkpointing = true;  // the blocks' per-token layers over rows [0,4) [4,8) … of the 18
  tokens.token_chunk_rows = 4;
  LossSum ra = run(m, fx, a, off), rb = run(m, fx, b, on), rc = run(m, fx, c, chunked),
          rd = run(m, fx, d, tokens), re = run(m, fx, e, kept);
  EXPECT_EQ(ra.loss, rb.loss);
  EXPECT_EQ(ra.loss, re.loss);
  EXPECT_NEAR(ra.loss, rc.loss, 1e-7 * ra.loss);  // sgemm blocking differs by chunk
  EXPECT_NEAR(ra.loss, rd.loss, 1e-6 * ra.loss);
  for (size_t i = 0; i < a.size(); i++) {
    const auto& ea = a.entries()[i];
    EXPECT_EQ(ea.grad.to_f32_vector(), b.entries()[i].grad.to_f32_vector()) << "checkpointing: " << ea.name;
    EXPECT_EQ(ea.grad.to_f32_vector(), e.entries()[i].grad.to_f32_vector()) << "kept attention: " << ea.name;
    EXPECT_LT(rel_err(c.entries()[i].grad.to_f32_vector(), ea.grad.to_f32_vector()), 1e-6) << ea.name;
    EXPECT_LT(rel_err(d.entries()[i].grad.to_f32_vector(), ea.grad.to_f32_vector()), 1e-5)
        << "tokens: " << ea.name;
  }
  // Loss only (no params): the same summed loss.
  LossSum eval = causal_lm_forward_backward(m, fx.file->get("ids"), fx.file->get("labels"), nullptr);
  EXPECT_EQ(eval.count, ra.count);
  EXPECT_NEAR(eval.loss, ra.loss, 1e-9 * ra.loss);
}

TEST(ModelGrad, GradientsAccumulateAcrossMicroBatches) {
  LlamaModel m = LlamaModel::load(model_fixture("llama_bias"));
  Fixture fx = load_fixture("llama_bias");
  TrainableParams once, twice;
  register_full_finetune(once, m);
  register_full_finetune(twice, m);
  run(m, fx, once, {});
  run(m, fx, twice, {});
  run(m, fx, twice, {});
  for (size_t i = 0; i < once.size(); i++) {
    std::vector<float> g1 = once.entries()[i].grad.to_f32_vector(),
                       g2 = twice.entries()[i].grad.to_f32_vector();
    for (float& g : g1) g *= 2;
    EXPECT_LT(rel_err(g2, g1), 1e-6) << once.entries()[i].name;
  }
  twice.zero_grads();
  for (float g : twice.entries()[0].grad.to_f32_vector()) ASSERT_EQ(g, 0.0f);
}

TEST(ModelGrad, MicroBatchesWithTotalCountScaleEqualOneBatch) {
  // The trainer's normalisation: each micro-batch scales by 1/(targets of the whole step), so two
  // one-row micro-batches give the gradient of the mean loss over the two-row batch (torch's gradient).
  LlamaModel m = LlamaModel::load(model_fixture("llama"));
  Fixture fx = load_fixture("llama");
  Tensor ids = fx.file->get("ids"), labels = fx.file->get("labels");
  int64_t T = ids.size(1), count = fx.meta["count"];
  TrainableParams p;
  register_full_finetune(p, m);
  StepOptions opts;
  opts.grad_scale = 1.0f / count;
  int64_t seen = 0;
  for (int64_t b = 0; b < 2; b++) {
    Tensor ib = ids.reshape({2 * T}).slice0(b * T, T).reshape({1, T});
    Tensor lb = labels.reshape({2 * T}).slice0(b * T, T).reshape({1, T});
    seen += causal_lm_forward_backward(m, ib, lb, &p, opts).count;
  }
  EXPECT_EQ(seen, count);
  for (const auto& e : p.entries())
    EXPECT_LT(rel_err(e.grad.to_f32_vector(), fx.file->get("grad." + e.name).to_f32_vector()), 1e-4)
        << e.name;
}

TEST(ModelGrad, PackedSequencesEqualSeparateRows) {
  // Two examples of lengths 4 and 5 in one packed row (seq ids, positions restarting) vs two rows.
  LlamaModel m = LlamaModel::load(model_fixture("llama"));
  std::vector<int32_t> a = {5, 17, 300, 2}, b = {9, 9, 41, 7, 100};
  std::vector<int32_t> la = {17, 300, 2, -100}, lb = {9, 41, 7, 100, -100};
  std::vector<int32_t> ids, labels, pos, seq;
  for (size_t i = 0; i < a.size(); i++)
    ids.push_back(a[i]), labels.push_back(la[i]), pos.push_back(i), seq.push_back(0);
  for (size_t i = 0; i < b.size(); i++)
    ids.push_back(b[i]), labels.push_back(lb[i]), pos.push_back(i), seq.push_back(1);
  Tensor pos_t = Tensor::from_i32(pos, {9}), seq_t = Tensor::from_i32(seq, {1, 9});
  StepOptions packed;
  packed.positions = &pos_t;
  packed.seq_ids = &seq_t;
  TrainableParams p1, p2;
  register_full_finetune(p1, m);
  register_full_finetune(p2, m);
  LossSum r1 = causal_lm_forward_backward(m, Tensor::from_i32(ids, {1, 9}), Tensor::from_i32(labels, {1, 9}),
                                          &p1, packed);
  LossSum r2a =
      causal_lm_forward_backward(m, Tensor::from_i32(a, {1, 4}), Tensor::from_i32(la, {1, 4}), &p2, {});
  LossSum r2b =
      causal_lm_forward_backward(m, Tensor::from_i32(b, {1, 5}), Tensor::from_i32(lb, {1, 5}), &p2, {});
  EXPECT_EQ(r1.count, r2a.count + r2b.count);
  EXPECT_NEAR(r1.loss, r2a.loss + r2b.loss, 1e-5 * r1.loss);
  for (size_t i = 0; i < p1.size(); i++)
    EXPECT_LT(rel_err(p1.entries()[i].grad.to_f32_vector(), p2.entries()[i].grad.to_f32_vector()), 1e-5)
        << p1.entries()[i].name;
}

TEST(ModelGrad, Errors) {
  LlamaModel m = LlamaModel::load(model_fixture("llama"));
  TrainableParams p;
  register_full_finetune(p, m);
  expect_error(
      [&] {
        causal_lm_forward_backward(m, Tensor::from_i32({1, 384}, {1, 2}), Tensor::from_i32({1, 2}, {1, 2}),
                                   &p);
      },
      ErrorKind::Shape, {"token id 384", "row 0, position 1", "[0, 384)"});
  expect_error(
      [&] {
        causal_lm_forward_backward(m, Tensor::from_i32({1, 2}, {1, 2}), Tensor::from_i32({1, 2}, {2, 1}), &p);
      },
      ErrorKind::Shape, {"labels must be", "[1, 2]"});
  expect_error(
      [&] {
        causal_lm_forward_backward(m, Tensor::from_i32({1, 2}, {1, 2}), Tensor::from_i32({1, 999}, {1, 2}),
                                   &p);
      },
      ErrorKind::Shape, {"label 999 at row 1"});
  expect_error([&] { p.add("lm_head.weight", m.lm_head().weight); }, ErrorKind::Usage,
               {"'lm_head.weight' registered twice"});
}

TEST(ModelGrad, InputsEmbedsAndPartialTraining) {
  LlamaModel m = LlamaModel::load(model_fixture("llama"));
  Fixture fx = load_fixture("llama");
  Tensor ids = fx.file->get("ids"), labels = fx.file->get("labels");
  const int64_t N = ids.numel(), C = m.config().hidden_size;
  TrainableParams full;
  register_full_finetune(full, m);
  LossSum rf = run(m, fx, full, {});
  // The first block's input given directly, its gradient returned: scattering it into the table gives
  // the embedding gradient; every other gradient is unchanged.
  TrainableParams rest;
  for (const auto& e : full.entries())
    if (e.name != "model.embed_tokens.weight") rest.add(e.name, e.param);
  Tensor emb = Tensor::empty({N, C}, DType::F32), demb = Tensor::zeros({N, C}, DType::F32);
  embedding_forward(emb, ids, m.embed_tokens());
  StepOptions o;
  o.inputs_embeds = &emb;
  o.d_inputs_embeds = &demb;
  LossSum re = causal_lm_forward_backward(m, ids, labels, &rest, o);
  EXPECT_EQ(re.loss, rf.loss);
  for (const auto& e : rest.entries())
    EXPECT_EQ(e.grad.to_f32_vector(), full.at(e.name).grad.to_f32_vector()) << e.name;
  Tensor table_grad = Tensor::zeros(m.embed_tokens().shape(), DType::F32);
  embedding_backward(table_grad, ids, demb);
  EXPECT_EQ(table_grad.to_f32_vector(), full.at("model.embed_tokens.weight").grad.to_f32_vector());
  // Only layer 1 and the final norm train: backward stops at block 1 and the gradients are the same.
  TrainableParams top;
  for (const char* n :
       {"model.layers.1.input_layernorm.weight", "model.layers.1.mlp.up_proj.weight", "model.norm.weight"})
    top.add(n, full.at(n).param);
  run(m, fx, top, {});
  for (const auto& e : top.entries())
    EXPECT_EQ(e.grad.to_f32_vector(), full.at(e.name).grad.to_f32_vector()) << e.name;
  Tensor bad = Tensor::zeros({N + 1, C}, DType::F32);
  o.inputs_embeds = &bad;
  expect_error([&] { causal_lm_forward_backward(m, ids, labels, &rest, o); }, ErrorKind::Shape,
               {"inputs_embeds must be F32 [18, 64]"});
}

TEST(ModelGrad, OwnWeightsMakesParametersWritable) {
  // Loaded f32 weights may be read-only mmap views; after own_weights an in-place update works and the
  // model computes with it (tied embeddings stay tied).
  for (const char* name : {"llama", "llama_bias"}) {
    LlamaModel m = LlamaModel::load(model_fixture(name));
    Tensor ids = Tensor::from_i32({1, 2, 3}, {1, 3});
    std::vector<float> before = m.forward(ids).to_f32_vector();
    own_weights(m);
    EXPECT_EQ(m.forward(ids).to_f32_vector(), before);
    TrainableParams p;
    register_full_finetune(p, m);
    for (const auto& e : p.entries()) {
      float* w = e.param.data<float>();
      for (int64_t i = 0; i < e.param.numel(); i++) w[i] *= 0.5f;  // would fault on a PROT_READ mapping
    }
    EXPECT_NE(m.forward(ids).to_f32_vector(), before) << name;
    if (m.config().tie_word_embeddings) EXPECT_EQ(m.lm_head().weight.raw(), m.embed_tokens().raw());
  }
}
