// causal_lm_forward_backward (see causal_lm.h).
#include "train/causal_lm.h"

#include <vector>

#include "core/error.h"
#include "ops/ops.h"
#include "train/block.h"

namespace qtune {

LossSum causal_lm_forward_backward(const LlamaModel& model, const Tensor& ids, const Tensor& labels,
                                   TrainableParams* params, const StepOptions& opts) {
  const ModelConfig& cfg = model.config();
  const char* op = "causal_lm_forward_backward";
  if (model.device() != Device::CPU)
    throw_error(ErrorKind::Unsupported, op, ": the model is on ", device_name(model.device()),
                "; training runs on the CPU so far");
  if (ids.ndim() != 2 || ids.dtype() != DType::I32 || ids.device() != Device::CPU)
    throw_error(ErrorKind::Shape, op, ": ids must be CPU I32 [B, T], got ", ids.describe());
  if (labels.shape() != ids.shape() || labels.dtype() != DType::I32 || labels.device() != Device::CPU)
    throw_error(ErrorKind::Shape, op, ": labels must be CPU I32 ", shape_str(ids.shape()), " like ids, got ",
                labels.describe());
  const int64_t B = ids.size(0), T = ids.size(1), N = B * T, C = cfg.hidden_size, V = cfg.vocab_size;
  if (N == 0) throw_error(ErrorKind::Shape, op, ": no tokens (ids ", ids.describe(), ")");
  const int32_t* id = ids.data<int32_t>();
  for (int64_t i = 0; i < N; i++)
    if (id[i] < 0 || id[i] >= V)
      throw_error(ErrorKind::Shape, op, ": token id ", id[i], " at row ", i / T, ", position ", i % T,
                  " is outside the vocabulary [0, ", V, ")");
  const Linear& head = model.lm_head();
  if (head.quantized()) throw_error(ErrorKind::Unsupported, op, ": a quantized lm_head is not supported");

  BlockInputs in;
  in.B = B;
  in.T = T;
  in.inv_freq = model.inv_freq();
  in.seq_ids = opts.seq_ids;
  if (opts.positions) {
    if (opts.positions->dtype() != DType::I32 || opts.positions->numel() != N)
      throw_error(ErrorKind::Shape, op, ": positions must be I32 with ", N, " entries, got ",
                  opts.positions->describe());
    in.positions = opts.positions->reshape({N});
  } else {
    std::vector<int32_t> pos(N);
    for (int64_t i = 0; i < N; i++) pos[i] = (int32_t)(i % T);
    in.positions = Tensor::from_i32(pos, {N});
  }

  const bool backward = params != nullptr;
  const float eps = (float)cfg.rms_norm_eps;
  std::vector<Block> blocks;
  for (int l = 0; l < cfg.num_hidden_layers; l++) blocks.emplace_back(cfg, model.layers()[l], l, params);
  std::vector<BlockSaved> saved(blocks.size());

  Tensor x = Tensor::empty({N, C}, DType::F32);  // residual stream [N, C]
  embedding_forward(x, ids, model.embed_tokens());
  for (size_t l = 0; l < blocks.size(); l++) {
    blocks[l].forward(x, in, saved[l], opts.gradient_checkpointing || !backward);
    if (!backward) saved[l] = BlockSaved();
  }
  Tensor hn = Tensor::empty({N, C}, DType::F32);
  rmsnorm_forward(hn, x, model.final_norm(), eps);

  if (!backward)
    return cross_entropy_forward_backward(hn, head.weight, labels, nullptr, nullptr, 1.0f,
                                          opts.loss_chunk_rows);

  Tensor* g_embed = params->grad("model.embed_tokens.weight");
  Tensor* g_head = cfg.tie_word_embeddings ? g_embed : params->grad("lm_head.weight");
  Tensor dhn = Tensor::zeros({N, C}, DType::F32);
  LossSum loss = cross_entropy_forward_backward(hn, head.weight, labels, &dhn, g_head, opts.grad_scale,
                                                opts.loss_chunk_rows);
  hn = Tensor();
  Tensor dx = Tensor::zeros({N, C}, DType::F32);
  rmsnorm_backward(dx, params->grad("model.norm.weight"), dhn, x, model.final_norm(), eps);
  dhn = x = Tensor();
  for (size_t l = blocks.size(); l-- > 0;) {
    blocks[l].backward(dx, in, saved[l]);
    saved[l] = BlockSaved();
  }
  if (g_embed) embedding_backward(*g_embed, ids, dx);
  return loss;
}

}  // namespace qtune
