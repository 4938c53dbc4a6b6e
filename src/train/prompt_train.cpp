// PromptTraining (see prompt_train.h): the extended micro-batch before the step, the prompt gradients after.
#include "train/prompt_train.h"

#include <algorithm>
#include <string>

#include "core/error.h"
#include "io/safetensors.h"
#include "ops/ops.h"

namespace qtune {

namespace {

const char* kEmbName = "prompt_encoder.default.embedding.weight";

}  // namespace

void PromptStep::apply(StepOptions& so) {
  so.positions = &positions;
  so.seq_ids = seq_ids.defined() ? &seq_ids : nullptr;
  so.inputs_embeds = inputs_embeds.defined() ? &inputs_embeds : nullptr;
  so.d_inputs_embeds = d_inputs_embeds.defined() ? &d_inputs_embeds : nullptr;
  so.prefixes = prefixes.empty() ? nullptr : &prefixes;
}

PromptTraining::PromptTraining(const LlamaModel& model, PromptLearningModel& pl, TrainableParams& params)
    : model_(model), pl_(pl) {
  if (PromptEncoder* enc = pl.encoder()) {
    for (PromptEncoder::Param& p : enc->mutable_params()) tensors_.emplace_back(p.name, p.value);
  } else {
    tensors_.emplace_back(kEmbName, pl.prompt_embeddings());
  }
  for (auto& [name, t] : tensors_) grads_.push_back(&params.add(name, t));
}

PromptStep PromptTraining::prepare(const Tensor& ids, const Tensor& labels, const Tensor* positions,
                                   const Tensor* seq_ids, bool first_token_is_target) const {
  const char* op = "PromptTraining::prepare";
  if (ids.ndim() != 2 || ids.dtype() != DType::I32 || ids.device() != Device::CPU)
    throw_error(ErrorKind::Shape, op, ": ids must be CPU I32 [B, T], got ", ids.describe());
  if (labels.shape() != ids.shape() || labels.dtype() != DType::I32 || labels.device() != Device::CPU)
    throw_error(ErrorKind::Shape, op, ": labels must be CPU I32 like ids, got ", labels.describe());
  const PromptLearningConfig& cfg = pl_.config();
  const ModelConfig& mc = model_.config();
  PromptStep st;
  const int64_t B = ids.size(0), T = ids.size(1), P = cfg.num_virtual_tokens, C = mc.hidden_size;
  st.B = B;
  st.T = T;
  st.P = P;
  if (P + T > mc.max_position_embeddings)
    throw_error(ErrorKind::Shape, op, ": ", P, " virtual tokens + ", T,
                " tokens exceed the model's context (max_position_embeddings ", mc.max_position_embeddings,
                ")");
  Tensor pos_cpu = positions ? positions->to(Device::CPU) : Tensor();
  Tensor seq_cpu = seq_ids ? seq_ids->to(Device::CPU) : Tensor();
  if (positions && pos_cpu.numel() != B * T)
    throw_error(ErrorKind::Shape, op, ": positions must have ", B * T, " entries, got ",
                positions->describe());
  if (seq_ids && seq_cpu.shape() != ids.shape())
    throw_error(ErrorKind::Shape, op, ": seq_ids must be like ids, got ", seq_ids->describe());
  const int32_t* id = ids.data<int32_t>();
  const int32_t* lab = labels.data<int32_t>();
  const int32_t* pos = positions ? pos_cpu.data<int32_t>() : nullptr;
  const int32_t* seq = seq_ids ? seq_cpu.data<int32_t>() : nullptr;
  if (seq)  // one example (+ padding) per row: at most one run of equal ids with targets
    for (int64_t b = 0; b < B; b++) {
      int runs = 0;
      for (int64_t t0 = 0, t1; t0 < T; t0 = t1) {
        bool has = false;
        for (t1 = t0; t1 < T && seq[b * T + t1] == seq[b * T + t0]; t1++)
          has = has || lab[b * T + t1] != -100;
        runs += has;
      }
      if (runs > 1)
        throw_error(ErrorKind::Unsupported, op, ": row ", b, " packs ", runs, " examples; ",
                    prompt_learning_type_name(cfg.peft_type),
                    " puts its virtual tokens before a whole row, so train it without packing");
    }

  const bool prefix = cfg.peft_type == PromptLearningType::PrefixTuning;
  const int64_t T2 = prefix ? T : P + T, off = prefix ? 0 : P;  // model rows; where the real tokens start
  std::vector<int32_t> ids2(B * T2, 0), lab2(B * T2, -100), pos2(B * T2), seq2(B * T2);
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t < off; t++) {  // virtual tokens (prompt / P-tuning)
      pos2[b * T2 + t] = (int32_t)t;
      seq2[b * T2 + t] = seq ? seq[b * T] : 0;
    }
    if (!prefix && first_token_is_target && T > 0) lab2[b * T2 + P - 1] = id[b * T];
    for (int64_t t = 0; t < T; t++) {
      ids2[b * T2 + off + t] = id[b * T + t];
      lab2[b * T2 + off + t] = lab[b * T + t];
      pos2[b * T2 + off + t] = (int32_t)(P + (pos ? pos[b * T + t] : t));
      seq2[b * T2 + off + t] = seq ? seq[b * T + t] : 0;
    }
  }
  st.ids = Tensor::from_i32(ids2, {B, T2});
  st.labels = Tensor::from_i32(lab2, {B, T2});
  st.positions = Tensor::from_i32(pos2, {B * T2});
  if (seq) st.seq_ids = Tensor::from_i32(seq2, {B, T2});
  for (int32_t l : lab2) st.targets += l != -100;

  const Device dev = model_.device();
  const DType act = model_.activation_dtype();
  const Tensor& emb = pl_.prompt_embeddings();  // F32 CPU
  if (!prefix) {
    Tensor tok = Tensor::empty({B * T, C}, DType::F32, dev);
    embedding_forward(tok, ids.to(dev), model_.embed_tokens());
    Tensor virt = emb.to(dev);  // [P, C]
    st.inputs_embeds = Tensor::empty({B * T2, C}, DType::F32, dev);
    for (int64_t b = 0; b < B; b++) {
      Tensor xv = st.inputs_embeds.slice0(b * T2, P), xt = st.inputs_embeds.slice0(b * T2 + P, T);
      xv.copy_from(virt);
      xt.copy_from(tok.slice0(b * T, T));
    }
    st.d_inputs_embeds = Tensor::zeros({B * T2, C}, DType::F32, dev);
    return st;
  }
  // Prefix tuning: layer l's keys are columns [2l·W, (2l+1)·W) of the embeddings, its values the next W.
  const int64_t L = cfg.num_layers, W = cfg.token_dim, Hkv = mc.num_key_value_heads, D = mc.head_dim;
  const float* e = emb.data<float>();  // [P, L·2·W]
  for (int64_t l = 0; l < L; l++)
    for (int kv = 0; kv < 2; kv++) {
      Tensor h = Tensor::empty({B, P, Hkv, D}, DType::F32);
      for (int64_t b = 0; b < B; b++)
        for (int64_t p = 0; p < P; p++)
          std::copy(e + (p * L * 2 + 2 * l + kv) * W, e + (p * L * 2 + 2 * l + kv + 1) * W,
                    h.data<float>() + (b * P + p) * W);
      (kv == 0 ? st.prefix_k : st.prefix_v).push_back(h.to_dtype(act).to(dev));
      (kv == 0 ? st.prefix_dk : st.prefix_dv).push_back(Tensor::zeros({B, P, Hkv, D}, DType::F32, dev));
    }
  for (int64_t l = 0; l < L; l++)
    st.prefixes.push_back({st.prefix_k[l], st.prefix_v[l], &st.prefix_dk[l], &st.prefix_dv[l]});
  return st;
}

void PromptTraining::backward(const PromptStep& st) {
  const PromptLearningConfig& cfg = pl_.config();
  const int64_t B = st.B, P = st.P;
  Tensor d = Tensor::zeros(cfg.embeddings_shape(), DType::F32);  // d(prompt_embeddings)
  float* dd = d.data<float>();
  if (cfg.peft_type != PromptLearningType::PrefixTuning) {
    const int64_t T2 = P + st.T, C = cfg.token_dim;
    for (int64_t b = 0; b < B; b++) {
      Tensor rows = st.d_inputs_embeds.slice0(b * T2, P).to(Device::CPU);  // [P, C]
      const float* r = rows.data<float>();
      for (int64_t i = 0; i < P * C; i++) dd[i] += r[i];
    }
  } else {
    const int64_t L = cfg.num_layers, W = cfg.token_dim;
    for (int64_t l = 0; l < L; l++)
      for (int kv = 0; kv < 2; kv++) {
        Tensor g = (kv == 0 ? st.prefix_dk : st.prefix_dv)[l].to(Device::CPU);  // [B, P, Hkv, D]
        const float* gp = g.data<float>();
        for (int64_t b = 0; b < B; b++)
          for (int64_t p = 0; p < P; p++)
            for (int64_t i = 0; i < W; i++) dd[(p * L * 2 + 2 * l + kv) * W + i] += gp[(b * P + p) * W + i];
      }
  }
  if (PromptEncoder* enc = pl_.encoder()) {
    enc->backward(d, grads_);
  } else {
    float* g = grads_[0]->data<float>();
    for (int64_t i = 0; i < d.numel(); i++) g[i] += dd[i];
  }
}

void PromptTraining::refresh() {
  pl_.refresh();
}

void PromptTraining::save_state(const std::string& path) const {
  write_safetensors(path, tensors_, {{"format", "pt"}});
}

void PromptTraining::load_state(const std::string& path) {
  auto f = SafetensorsFile::open(path);
  for (auto& [name, t] : tensors_) {
    if (!f->has(name)) throw_error(ErrorKind::Format, path, ": missing tensor '", name, "'");
    Tensor v = f->get(name);
    if (v.shape() != t.shape() || v.dtype() != DType::F32)
      throw_error(ErrorKind::Format, path, ": tensor '", name, "' is ", v.describe(), ", expected F32 ",
                  shape_str(t.shape()));
    t.copy_from(v);
  }
  if (f->tensors().size() != tensors_.size())
    throw_error(ErrorKind::Format, path, ": ", f->tensors().size(), " tensors, expected ", tensors_.size(),
                " (another prompt-learning configuration?)");
  pl_.refresh();
}

}  // namespace qtune
