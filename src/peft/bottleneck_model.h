// BottleneckModel: bottleneck adapters (bottleneck_config.h) on a LlamaModel. Each targeted Linear (o_proj,
// down_proj: the last projection of a sub-layer) gets a BottleneckLayer that rewrites its output before the
// residual add:
//   y = h + up(act(down(h))),   h = x·Wᵀ (+ b) [N, C],  down [r, C] + bias [r],  up [C, r] + bias [C]
// computed in f32 (as adapter weights are kept in f32) and rounded once to the activation dtype. A fresh
// adapter has a random down-projection and a zero up-projection: it starts as the identity.
//
//   BottleneckConfig cfg;  cfg.adapter_style = "pfeiffer";  cfg.bottleneck_size = 16;
//   BottleneckModel ad = BottleneckModel::create(model, cfg, /*seed=*/0);
//   ... train ad.trainable() (train/bottleneck_train.h) ...; ad.save("out");
//   BottleneckModel again = BottleneckModel::load(model2, "out");
// The model must outlive the BottleneckModel.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/linear.h"
#include "model/llama_model.h"
#include "peft/bottleneck_config.h"
#include "peft/lora_model.h"
#include "peft/peft_adapter.h"

namespace qtune {

struct BottleneckLayer : LinearAdapter {
  std::string module;  // "model.layers.0.mlp.down_proj"
  int64_t r = 0, C = 0;
  AdapterAct act = AdapterAct::Relu;
  // F32 CPU masters, and their forms on the model's device (the masters themselves on the CPU).
  Tensor down_w, down_b, up_w, up_b;          // [r, C], [r], [C, r], [C]
  Tensor down_w_d, down_b_d, up_w_d, up_b_d;  // device copies (refresh)

  void refresh(Device device);
  void apply(Tensor& out, const Tensor& x) const override;  // out += up(act(down(out)))
  // The adapter's inner activations from h (F32 [N, C] on the device): z = down(h) [N, r], a = act(z).
  void inner(const Tensor& h32, Tensor& z, Tensor& a) const;
};

class BottleneckModel : public PeftAdapter {
 public:
  // Fresh adapters (seeded): down ~ U(-1/√C, 1/√C) (nn.Linear's bound), down bias 0, up = 0 (identity at
  // start), attached. Throws ErrorKind::Config for a bad config or targets matching nothing.
  static BottleneckModel create(LlamaModel& model, BottleneckConfig cfg, uint64_t seed);
  // Reads a BOTTLENECK folder and attaches it; errors name the file (another peft_type, bad fields, a
  // hidden_size or tensor shapes that do not fit this model, missing / unexpected tensors).
  static BottleneckModel load(LlamaModel& model, const std::string& dir);

  const char* peft_type() const override { return "BOTTLENECK"; }
  void attach() override;
  void detach() override;
  void save(const std::string& dir) const override;

  // Every tensor under its saved key ("base_model.model.<module>.adapter_down.weight" ...), F32 CPU masters.
  std::vector<NamedTensor> trainable() const;
  void refresh();  // after the masters changed on the CPU: new device copies, layers (re)attached

  const BottleneckConfig& config() const { return cfg_; }
  const std::vector<std::string>& targets() const { return targets_; }
  const std::vector<std::shared_ptr<BottleneckLayer>>& layers() const { return layers_; }
  LlamaModel& model() const { return *model_; }

 private:
  BottleneckModel() = default;
  Linear* find_linear(const std::string& module) const;

  LlamaModel* model_ = nullptr;
  BottleneckConfig cfg_;
  std::vector<std::string> targets_;
  std::vector<std::shared_ptr<BottleneckLayer>> layers_;
};

}  // namespace qtune
