// DecodeStep (decode_step.h): persistent buffers, the step's launches, and its CUDA-graph capture.
#include "model/decode_step.h"

#include <algorithm>

#include "core/allocator.h"
#include "core/error.h"
#include "model/quant_linear.h"
#include "ops/ops.h"
#ifdef QTUNE_HAVE_CUDA
#include "model/cuda/quant_linear_cuda.h"
#include "model/cuda/sampling_cuda.h"
#include "ops/cuda/cuda_graph.h"
#include "ops/cuda/cuda_ops.h"
#endif

namespace qtune {

namespace {

// What the step can run through Linear::forward: dense (with or without a bias), 4-bit (the fused 4-bit
// GEMV) or LLM.int8 (the int8 GEMV), on the GPU. None allocates or synchronises at one token (the int8
// forward keeps its buffers for a graph), so all sit in the graph. Adapters keep LlamaModel::forward's path.
[[maybe_unused]] bool runnable(const Linear& lin) {
  if (lin.adapter) return false;
  if (lin.q8) return lin.q8->on_cuda();
  return lin.q4 ? lin.q4->on_cuda() : lin.weight.defined();
}

#ifdef QTUNE_HAVE_CUDA
// The residual add and RMSNorm before these Linears (which share their input) can run inside their launch:
// all 4-bit, each taking the 4-bit GEMV's norm, or all LLM.int8 taking the int8 row GEMV's.
bool norm_fusable(const std::vector<const Linear*>& lins, const Tensor& norm_w) {
  bool all4 = true, all8 = true;
  std::vector<const Int8Linear*> q8s;
  for (const Linear* l : lins) {
    all4 = all4 && l->q4 && quant4_gemv_norm_ok(*l->q4, norm_w);
    all8 = all8 && l->q8;
    if (l->q8) q8s.push_back(l->q8.get());
  }
  return all4 || (all8 && int8_gemv_norm_ok(q8s, norm_w));
}
#endif

}  // namespace

#ifdef QTUNE_HAVE_CUDA
struct DecodeStep::Graph {
  cuda::CudaGraph g;
};
struct DecodeStep::Greedy {
  GreedyPicker picker;
};
#else
struct DecodeStep::Graph {};
struct DecodeStep::Greedy {};
#endif

bool DecodeStep::supported(const LlamaModel& model, const KVCache& cache) {
#ifdef QTUNE_HAVE_CUDA
  if (model.device() != Device::CUDA || cache.batch() != 1 ||
      cache.layers() != model.config().num_hidden_layers)
    return false;
  if (model.activation_dtype() != DType::BF16 || model.config().head_dim % 2 != 0) return false;
  if (model.device_map().split()) return false;  // CPU-offloaded modules: LlamaModel::forward's path
  if (!runnable(model.lm_head())) return false;
  for (const LlamaLayer& L : model.layers()) {
    if (L.attn_adapter) return false;
    for (const Linear* lin : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      if (!runnable(*lin)) return false;
  }
  return true;
#else
  (void)model;
  (void)cache;
  return false;
#endif
}

DecodeStep::DecodeStep(const LlamaModel& model, KVCache& cache, bool use_graph, bool fuse_add_norm)
    : model_(model), cache_(cache), use_graph_(use_graph), fuse_add_norm_(fuse_add_norm) {
  if (!supported(model, cache))
    throw_error(ErrorKind::Unsupported,
                "DecodeStep: needs a CUDA model with dense, 4-bit or LLM.int8 Linears (no adapter or CPU "
                "offload) and a batch-1 cache");
  const ModelConfig& c = model.config();
  const int64_t C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
  const DType act = model.activation_dtype();
  const Device dev = Device::CUDA;
  io_ = Tensor::zeros({2}, DType::I32, dev);
  ids_ = io_.slice0(0, 1).reshape({1, 1});  // [1, 1]
  pos_ = io_.slice0(1, 1);                  // [1]
  x_ = Tensor::empty({1, C}, act, dev);     // residual stream
#ifdef QTUNE_HAVE_CUDA
  // The residual add and RMSNorm inside the GEMV after them (the 4-bit GEMV, or the int8 row GEMV), when
  // every q/k/v and gate/up group takes that path with its norm; and the SwiGLU inside the 4-bit gate/up
  // GEMV when every pair also takes it.
  norm_in_gemv_ = fuse_add_norm;
  glu_in_gemv_ = true;
  for (const LlamaLayer& L : model.layers()) {
    norm_in_gemv_ = norm_in_gemv_ && norm_fusable({&L.q, &L.k, &L.v}, L.input_norm) &&
                    norm_fusable({&L.gate, &L.up}, L.post_norm);
    glu_in_gemv_ =
        glu_in_gemv_ && norm_in_gemv_ && L.gate.q4 && L.up.q4 && quant4_gemv_glu_ok(*L.gate.q4, *L.up.q4);
  }
  // Otherwise the SwiGLU inside the int8 down projection's launch, when every down weight takes it.
  glu_in_down_ = fuse_add_norm && !glu_in_gemv_;
  for (const LlamaLayer& L : model.layers())
    glu_in_down_ = glu_in_down_ && L.down.q8 && int8_gemv_glu_ok(*L.down.q8);
  if (norm_in_gemv_) x2_ = Tensor::empty({1, C}, act, dev);  // the residual alternates with x_
#endif
  h_ = Tensor::empty({1, C}, act, dev);
  q_ = Tensor::empty({1, Hq * D}, act, dev);
  k_ = Tensor::empty({1, Hkv * D}, act, dev);
  v_ = Tensor::empty({1, Hkv * D}, act, dev);
  att_ = Tensor::empty({1, Hq * D}, act, dev);
  proj_ = Tensor::empty({1, C}, act, dev);
  g_ = Tensor::empty({1, F}, act, dev);
  u_ = Tensor::empty({1, F}, act, dev);
  a_ = Tensor::empty({1, F}, act, dev);
  hn_ = Tensor::empty({1, C}, act, dev);
  logits_ = Tensor::empty({1, V}, DType::F32, dev);
  graph_ = std::make_unique<Graph>();
#ifdef QTUNE_HAVE_CUDA
  host_ = std::shared_ptr<void>(host_pinned_malloc((size_t)V * 4), host_pinned_free);
  greedy_ = std::make_unique<Greedy>();
  int64_t wsf = cuda::attention_at_workspace_floats(q_.reshape({1, 1, Hq, D}), cache.k(0));
  ws_ = Tensor::empty({std::max<int64_t>(wsf, 1)}, DType::F32, dev);
#endif
}

DecodeStep::~DecodeStep() = default;

bool DecodeStep::graph_active() const {
#ifdef QTUNE_HAVE_CUDA
  return graph_ && graph_->g.ready();
#else
  return false;
#endif
}

void DecodeStep::launch_step() {
#ifdef QTUNE_HAVE_CUDA
  const ModelConfig& c = model_.config();
  const int64_t Hq = c.num_attention_heads, D = c.head_dim;
  const float eps = (float)c.rms_norm_eps;
  Tensor q4 = q_.reshape({1, 1, Hq, D}), att4 = att_.reshape({1, 1, Hq, D});
  const std::vector<LlamaLayer>& layers = model_.layers();
  Tensor *res = &x_, *next = &x2_;  // the residual, and where a GEMV-fused add writes the next one
  // With add, the residual += proj_; then h = rmsnorm(residual) · w: one launch (add_rmsnorm) or two.
  auto add_norm = [&](Tensor& h, bool add, const Tensor& w) {
    if (!add) {
      rmsnorm_forward(h, *res, w, eps);
    } else if (fuse_add_norm_) {
      cuda::add_rmsnorm(*res, proj_, h, w, eps);
    } else {
      add_inplace(*res, proj_);
      rmsnorm_forward(h, *res, w, eps);
    }
  };
  // outs = lins(h) for that h. With norm_in_gemv_ the add and the norm run inside the 4-bit GEMV's launch:
  // its block 0 writes the new residual to the other buffer, as every block reads the current one. glu:
  // also silu(outs[0]) · outs[1] into it, in the same launch.
  auto norm_linears = [&](const std::vector<Tensor*>& outs, bool add, const Tensor& w,
                          const std::vector<const Linear*>& lins, Tensor* glu = nullptr) {
    if (!norm_in_gemv_) {
      add_norm(h_, add, w);
      linear_forward_shared(outs, h_, lins);
      return;
    }
    std::vector<const Quant4Linear*> w4;
    std::vector<const Int8Linear*> w8;
    std::vector<const Tensor*> biases;
    for (const Linear* l : lins) {
      if (l->q4) w4.push_back(l->q4.get());
      if (l->q8) w8.push_back(l->q8.get());
      biases.push_back(l->bias.defined() ? &l->bias : nullptr);
    }
    const Tensor* x_add = add ? &proj_ : nullptr;
    Tensor* res_out = add ? next : nullptr;
    const bool ran =
        w4.size() == lins.size()
            ? quant4_linear_forward_norm_cuda(outs, *res, x_add, w, eps, res_out, w4, biases, glu)
            : !glu && int8_linear_forward_norm_cuda(outs, *res, x_add, w, eps, res_out, w8, biases);
    if (!ran)
      throw_error(ErrorKind::Internal, "DecodeStep: the GEMV refused the residual norm it was chosen for");
    if (add) std::swap(res, next);
  };
  for (int l = 0; l < c.num_hidden_layers; l++) {
    const LlamaLayer& L = layers[l];
    Tensor kc = cache_.k(l), vc = cache_.v(l);  // [1, Smax, Hkv, D]
    // Layer 0 normalizes the token's embedding (run() put it in x_); later layers add the down projection.
    norm_linears({&q_, &k_, &v_}, l > 0, L.input_norm, {&L.q, &L.k, &L.v});
    cuda::attention_rope_forward_at(att4, q4, &k_, &v_, kc, vc, pos_, &model_.inv_freq(), ws_);  // + RoPE
    L.o.forward(proj_, att_);
    norm_linears({&g_, &u_}, true, L.post_norm, {&L.gate, &L.up}, glu_in_gemv_ ? &a_ : nullptr);
    if (glu_in_down_) {
      if (!int8_linear_forward_glu_cuda(proj_, g_, u_, *L.down.q8,
                                        L.down.bias.defined() ? &L.down.bias : nullptr))
        throw_error(ErrorKind::Internal,
                    "DecodeStep: the int8 row GEMV refused the SwiGLU it was chosen for");
    } else {
      if (!glu_in_gemv_) swiglu_forward(a_, g_, u_);
      L.down.forward(proj_, a_);
    }
  }
  add_norm(hn_, true, model_.final_norm());
  model_.lm_head().forward(logits_, hn_);
#endif
}

const Tensor& DecodeStep::run(int32_t token, int64_t pos) {
  const ModelConfig& c = model_.config();
  if (token < 0 || token >= c.vocab_size)
    throw_error(ErrorKind::Shape, "DecodeStep: token id ", token, " is outside the vocabulary [0, ",
                c.vocab_size, ")");
  if (pos < 0 || pos >= cache_.max_seq())
    throw_error(ErrorKind::Shape, "DecodeStep: position ", pos, " is outside the KV cache of ",
                cache_.max_seq(), " positions");
  if (c.sliding_window > 0 && pos + 1 > c.sliding_window)
    throw_error(ErrorKind::Unsupported, "DecodeStep: position ", pos, " is past the sliding window (",
                c.sliding_window, ") and sliding-window attention is not implemented");
#ifdef QTUNE_HAVE_CUDA
  host_io_[0] = token;
  host_io_[1] = (int32_t)pos;
  cuda::copy_to_device_async(io_.raw(), host_io_, sizeof(host_io_));
  // The embedding row, outside the graph: embedding_forward checks ids with a host sync, which a
  // capture cannot hold; the token was checked above and a row copy needs no kernel.
  const Tensor& embed = model_.embed_tokens();
  if (embed.dtype() == x_.dtype())
    cuda::copy_device_async(x_.raw(), embed.slice0(token, 1).raw(), x_.nbytes());
  else
    embedding_forward(x_, ids_, embed);
  if (use_graph_ && !graph_->g.ready() && err_.empty() && runs_ >= 1) {
    if (!graph_->g.capture([this] { launch_step(); })) {
      err_ = graph_->g.error();
      if (err_.empty()) err_ = "capture failed";
    }
  }
  if (graph_->g.ready())
    graph_->g.launch();
  else
    launch_step();
  runs_++;
#endif
  return logits_;
}

int32_t DecodeStep::greedy_token() {
#ifdef QTUNE_HAVE_CUDA
  return greedy_->picker.pick(logits_);
#else
  return 0;
#endif
}

const float* DecodeStep::host_logits() {
#ifdef QTUNE_HAVE_CUDA
  cuda::copy_to_host_sync(host_.get(), logits_.raw(), logits_.nbytes());
#endif
  return static_cast<const float*>(host_.get());
}

}  // namespace qtune
