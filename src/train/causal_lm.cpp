// causal_lm_forward_backward (see causal_lm.h).
#include "train/causal_lm.h"

#include <memory>
#include <vector>

#include "core/allocator.h"
#include "core/error.h"
#include "core/profile.h"
#include "ops/ops.h"
#include "train/block.h"
#ifdef QTUNE_HAVE_CUDA
#include "train/cuda/activation_offload.h"
#endif

namespace qtune {

LossSum causal_lm_forward_backward(const LlamaModel& model, const Tensor& ids, const Tensor& labels,
                                   TrainableParams* params, const StepOptions& opts) {
  const ModelConfig& cfg = model.config();
  const char* op = "causal_lm_forward_backward";
  const Device dev = model.device();
  const DType adt = dev == Device::CPU ? DType::F32 : DType::BF16;  // activation dtype (block.h)
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
  if (cfg.sliding_window > 0 && T > cfg.sliding_window)
    throw_error(ErrorKind::Unsupported, op, ": ", T, " tokens exceed the sliding window (",
                cfg.sliding_window, ") and sliding-window attention is not implemented");
  const Linear& head = model.lm_head();
  if (head.quantized()) throw_error(ErrorKind::Unsupported, op, ": a quantized lm_head is not supported");
  if (head.adapter)  // the chunked loss multiplies by the head weight alone
    throw_error(ErrorKind::Unsupported, op, ": an adapter on lm_head is not supported in training yet");

  BlockInputs in;
  in.B = B;
  in.T = T;
  in.inv_freq = model.inv_freq();
  in.seq_ids = opts.seq_ids;
  in.prefixes = opts.prefixes;
  in.chunk_rows = opts.token_chunk_rows;
  if (opts.keep_attention >= 0) {
    in.keep_attention = opts.keep_attention == 1;
  } else if (dev == Device::CUDA && opts.gradient_checkpointing && !opts.offload_activations &&
             (opts.token_chunk_rows <= 0 || N <= opts.token_chunk_rows)) {
    const int64_t bytes =
        cfg.num_hidden_layers * N *
        ((int64_t)cfg.num_attention_heads * cfg.head_dim * 2 + (int64_t)cfg.num_attention_heads * 4);
    const int64_t capacity = (int64_t)device_memory_capacity(),
                  in_use = (int64_t)device_memory_stats().in_use;
    in.keep_attention = bytes <= (capacity - in_use) / 8;
  }
  if (opts.prefixes && (int64_t)opts.prefixes->size() != cfg.num_hidden_layers)
    throw_error(ErrorKind::Shape, op, ": ", opts.prefixes->size(), " attention prefixes for ",
                cfg.num_hidden_layers, " layers");
  if (opts.positions) {
    if (opts.positions->dtype() != DType::I32 || opts.positions->numel() != N)
      throw_error(ErrorKind::Shape, op, ": positions must be I32 with ", N, " entries, got ",
                  opts.positions->describe());
    in.positions = opts.positions->reshape({N}).to(dev);
  } else {
    std::vector<int32_t> pos(N);
    for (int64_t i = 0; i < N; i++) pos[i] = (int32_t)(i % T);
    in.positions = Tensor::from_i32(pos, {N}).to(dev);
  }
  Tensor seq_ids_dev;  // the packing ids where the blocks run
  if (opts.seq_ids) {
    seq_ids_dev = opts.seq_ids->to(dev);
    in.seq_ids = &seq_ids_dev;
  }

  const bool backward = params != nullptr;
  const float eps = (float)cfg.rms_norm_eps;
  std::vector<Block> blocks;
  for (int l = 0; l < cfg.num_hidden_layers; l++) blocks.emplace_back(cfg, model.layers()[l], l, params);
  std::vector<BlockSaved> saved(blocks.size());

  Tensor* g_embed = backward ? params->grad("model.embed_tokens.weight") : nullptr;
  // Backward runs blocks [stop, L): below the lowest block with something trainable, only the embedding
  // or d_inputs_embeds could want the gradient.
  size_t stop = blocks.size();
  if (backward && ((g_embed && !opts.inputs_embeds) || opts.d_inputs_embeds || opts.prefixes)) stop = 0;
  for (size_t l = 0; backward && l < stop; l++)
    if (blocks[l].has_trainable()) stop = l;

  Tensor x = Tensor::empty({N, C}, adt, dev);  // residual stream [N, C]
  const Tensor ids_dev = ids.to(dev);
  if (opts.inputs_embeds) {
    if (opts.inputs_embeds->dtype() != DType::F32 || opts.inputs_embeds->numel() != N * C)
      throw_error(ErrorKind::Shape, op, ": inputs_embeds must be F32 [", N, ", ", C, "], got ",
                  opts.inputs_embeds->describe());
    convert(x, opts.inputs_embeds->to(dev).reshape({N, C}));
  } else {
    QT_PROFILE("embedding");
    embedding_forward(x, ids_dev, model.embed_tokens());
  }
  if (opts.d_inputs_embeds &&
      (opts.d_inputs_embeds->dtype() != DType::F32 || opts.d_inputs_embeds->numel() != N * C))
    throw_error(ErrorKind::Shape, op, ": d_inputs_embeds must be F32 [", N, ", ", C, "], got ",
                opts.d_inputs_embeds->describe());
  // The saved block inputs go to the host between forward and backward when offloading.
  const bool offload = backward && opts.offload_activations;
  if (offload && (dev != Device::CUDA || !opts.gradient_checkpointing))
    throw_error(ErrorKind::Usage, op,
                ": offloading activations needs a GPU model and gradient checkpointing");
#ifdef QTUNE_HAVE_CUDA
  std::unique_ptr<ActivationOffload> offloader;
  if (offload) offloader = std::make_unique<ActivationOffload>((int)blocks.size());
#endif
  for (size_t l = 0; l < blocks.size(); l++) {
    bool keep = backward && l >= stop;
    if (opts.block_hooks)
      opts.block_hooks->before_block((int)l, l + 1 < blocks.size() ? (int)l + 1 : -1, false);
    blocks[l].forward(x, in, saved[l], opts.gradient_checkpointing || !keep);
    if (opts.block_hooks) opts.block_hooks->after_block((int)l, false);
    if (!keep) saved[l] = BlockSaved();
#ifdef QTUNE_HAVE_CUDA
    if (keep && offloader) offloader->store((int)l, saved[l].x_in);
#endif
  }
#ifdef QTUNE_HAVE_CUDA
  if (offloader) offloader->flush();
#endif
  Tensor hn = Tensor::empty({N, C}, adt, dev);
  rmsnorm_forward(hn, x, model.final_norm(), eps);

  if (!backward)
    return cross_entropy_forward_backward(hn, head.weight, labels, nullptr, nullptr, 1.0f,
                                          opts.loss_chunk_rows);

  Tensor* g_head = cfg.tie_word_embeddings ? g_embed : params->grad("lm_head.weight");
  Tensor dhn = Tensor::zeros({N, C}, DType::F32, dev);
  LossSum loss;
  {
    QT_PROFILE("lm_head+cross_entropy");
    loss = cross_entropy_forward_backward(hn, head.weight, labels, &dhn, g_head, opts.grad_scale,
                                          opts.loss_chunk_rows);
  }
  hn = Tensor();
  Tensor dx = Tensor::zeros({N, C}, DType::F32, dev);
  rmsnorm_backward(dx, params->grad("model.norm.weight"), dhn, x, model.final_norm(), eps);
  dhn = x = Tensor();
  for (size_t l = blocks.size(); l-- > stop;) {
#ifdef QTUNE_HAVE_CUDA
    if (offloader) {  // this block's input back to the GPU; the next one's copy runs beside its backward
      saved[l].x_in = offloader->take((int)l);
      if (l > stop) offloader->prefetch((int)l - 1);
    }
#endif
    if (opts.block_hooks) opts.block_hooks->before_block((int)l, l > stop ? (int)l - 1 : -1, true);
    blocks[l].backward(dx, in, saved[l]);
    if (opts.block_hooks) opts.block_hooks->after_block((int)l, true);
    saved[l] = BlockSaved();
  }
  if (stop > 0) return loss;  // nothing below needs d(input)
  if (g_embed && !opts.inputs_embeds) embedding_backward(*g_embed, ids_dev, dx);
  if (opts.d_inputs_embeds)
    add_inplace(*opts.d_inputs_embeds,
                dx.to(opts.d_inputs_embeds->device()).reshape(opts.d_inputs_embeds->shape()));
  return loss;
}

}  // namespace qtune
