// PeftSession for each PEFT method the trainer trains, and the checks of their settings (see
// peft_session.h).
#include "train/peft_session.h"

#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "io/json_util.h"
#include "model/virtual_tokens.h"
#include "peft/adaption_prompt.h"
#include "peft/bottleneck_model.h"
#include "peft/ia3_model.h"
#include "peft/lora_model.h"
#include "peft/peft_adapter.h"
#include "tokenizer/tokenizer.h"
#include "train/adaption_train.h"
#include "train/bottleneck_train.h"
#include "train/full_train.h"
#include "train/ia3_train.h"
#include "train/lora_train.h"

namespace qtune {

namespace {

const char* kStateFile = "peft_state.safetensors";  // checkpoint extras of the prompt types

std::string lower(std::string s) {
  for (char& c : s) c = (char)std::tolower((unsigned char)c);
  return s;
}

// --- LoRA / DoRA -------------------------------------------------------------------------------------

class LoraSession : public PeftSession {
 public:
  LoraSession(LlamaModel& model, LoraModel lora, uint64_t seed)
      : lora_(std::make_unique<LoraModel>(std::move(lora))) {
    training_ = std::make_unique<LoraTraining>(model, *lora_, params_, seed, lora_->config().lora_dropout);
  }
  ~LoraSession() override { training_.reset(); }  // the plain layers back before the adapter goes
  PeftKind kind() const override { return PeftKind::Lora; }
  std::string describe() const override {
    return std::to_string(lora_->layers().size()) + (lora_->config().use_dora ? " DoRA" : " LoRA") +
           " layers";
  }
  void set_training(bool on) override { training_->set_training(on); }
  void set_step(uint64_t k) override { training_->set_step(k); }
  void refresh() override { training_->refresh(); }
  void sync_to_host() override { training_->sync_to_host(); }
  void save(const std::string& dir) const override { lora_->save(dir); }

 private:
  std::unique_ptr<LoraModel> lora_;
  std::unique_ptr<LoraTraining> training_;
};

// --- full fine-tuning ---------------------------------------------------------------------------------

class FullSession : public PeftSession {
 public:
  FullSession(LlamaModel& model, const std::string& source_dir)
      : training_(model, params_), source_dir_(source_dir) {}
  PeftKind kind() const override { return PeftKind::Full; }
  std::string describe() const override {
    return "full fine-tuning (" + std::to_string(training_.tensors()) + " tensors)";
  }
  void refresh() override { training_.refresh(); }
  // A model folder (F32 weights: a checkpoint resumes exactly) instead of an adapter.
  void save(const std::string& dir) const override { training_.save(dir, source_dir_); }
  void load_state(const std::string& dir) override { training_.load(dir); }

 private:
  FullTraining training_;
  std::string source_dir_;
};

// --- IA3 ---------------------------------------------------------------------------------------------

class Ia3Session : public PeftSession {
 public:
  explicit Ia3Session(Ia3Model ia3) : ia3_(std::make_unique<Ia3Model>(std::move(ia3))) {
    training_ = std::make_unique<Ia3Training>(*ia3_, params_);
  }
  ~Ia3Session() override { training_.reset(); }
  PeftKind kind() const override { return PeftKind::Ia3; }
  std::string describe() const override {
    int64_t ff = 0;
    for (const auto& l : ia3_->layers()) ff += l->feedforward;
    return std::to_string(ia3_->layers().size()) + " IA3 vectors (" + std::to_string(ff) + " feed-forward)";
  }
  void sync_to_host() override { training_->sync_to_host(); }
  void save(const std::string& dir) const override { ia3_->save(dir); }

 private:
  std::unique_ptr<Ia3Model> ia3_;
  std::unique_ptr<Ia3Training> training_;
};

// --- bottleneck adapters -----------------------------------------------------------------------------

class BottleneckSession : public PeftSession {
 public:
  explicit BottleneckSession(BottleneckModel ad) : ad_(std::make_unique<BottleneckModel>(std::move(ad))) {
    training_ = std::make_unique<BottleneckTraining>(*ad_, params_);
  }
  ~BottleneckSession() override { training_.reset(); }
  PeftKind kind() const override { return PeftKind::Bottleneck; }
  std::string describe() const override {
    const BottleneckConfig& c = ad_->config();
    return std::to_string(ad_->layers().size()) + " " + c.adapter_style + " bottleneck adapters (size " +
           std::to_string(c.bottleneck_size) + ", " + adapter_act_name(c.non_linearity) + ")";
  }
  void sync_to_host() override { training_->sync_to_host(); }
  void save(const std::string& dir) const override { ad_->save(dir); }

 private:
  std::unique_ptr<BottleneckModel> ad_;
  std::unique_ptr<BottleneckTraining> training_;
};

// --- LLaMA-Adapter ------------------------------------------------------------------------------------

class AdaptionSession : public PeftSession {
 public:
  explicit AdaptionSession(AdaptionPromptModel ap)
      : ap_(std::make_unique<AdaptionPromptModel>(std::move(ap))) {
    training_ = std::make_unique<AdaptionPromptTraining>(*ap_, params_);
  }
  ~AdaptionSession() override { training_.reset(); }
  PeftKind kind() const override { return PeftKind::AdaptionPrompt; }
  std::string describe() const override {
    const AdaptionPromptConfig& c = ap_->config();
    return "LLaMA-Adapter (ADAPTION_PROMPT): " + std::to_string(c.adapter_len) +
           " gated prompt rows in the top " + std::to_string(c.adapter_layers) + " layers";
  }
  void sync_to_host() override { training_->sync_to_host(); }
  void save(const std::string& dir) const override { ap_->save(dir); }

 private:
  std::unique_ptr<AdaptionPromptModel> ap_;
  std::unique_ptr<AdaptionPromptTraining> training_;
};

// --- prompt tuning, P-tuning, prefix tuning ----------------------------------------------------------

class PromptSession : public PeftSession {
 public:
  PromptSession(const LlamaModel& model, PromptLearningModel pl, PeftKind kind)
      : kind_(kind), pl_(std::make_unique<PromptLearningModel>(std::move(pl))) {
    training_ = std::make_unique<PromptTraining>(model, *pl_, params_);
  }
  PeftKind kind() const override { return kind_; }
  std::string describe() const override {
    const PromptLearningConfig& c = pl_->config();
    std::string s =
        std::to_string(c.num_virtual_tokens) + " virtual tokens (" + prompt_learning_type_name(c.peft_type);
    if (c.peft_type == PromptLearningType::PromptTuning) s += ", " + c.prompt_tuning_init + " init";
    if (c.peft_type == PromptLearningType::PrefixTuning)
      s += ", key/value prefixes in " + std::to_string(c.num_layers) + " layers";
    if (const PromptEncoder* e = pl_->encoder())
      s += std::string(e->kind() == PromptEncoder::Kind::PTuningMlp ? ", MLP encoder" : ", projection") +
           " hidden " + std::to_string(c.encoder_hidden_size);
    return s + ")";
  }
  int64_t virtual_tokens() const override { return pl_->config().num_virtual_tokens; }
  PeftBatch prepare(const MicroBatch& mb, bool first_token_is_target) const override {
    PeftBatch b;
    b.mb = &mb;
    b.prompt = std::make_unique<PromptStep>(
        training_->prepare(mb.ids, mb.labels, &mb.positions, &mb.seq_ids, first_token_is_target));
    b.targets = b.prompt->targets;
    return b;
  }
  void after_backward(const PeftBatch& b) override { training_->backward(*b.prompt); }
  void refresh() override { training_->refresh(); }
  void save(const std::string& dir) const override { pl_->save(dir); }
  Tensor logits(const LlamaModel& model, const Tensor& ids) const override {
    VirtualTokens vt = pl_->virtual_tokens();
    KVCache cache = model.make_cache(ids.size(0), vt.count() + ids.size(1));
    return forward_with_virtual_tokens(model, ids, cache, vt);
  }
  void save_state(const std::string& dir) const override {
    training_->save_state(path_join(dir, kStateFile));
  }
  void load_state(const std::string& dir) override { training_->load_state(path_join(dir, kStateFile)); }

 private:
  PeftKind kind_;
  std::unique_ptr<PromptLearningModel> pl_;
  std::unique_ptr<PromptTraining> training_;
};

PromptLearningType prompt_type(PeftKind k) {
  if (k == PeftKind::PTuning) return PromptLearningType::PTuning;
  if (k == PeftKind::PrefixTuning) return PromptLearningType::PrefixTuning;
  return PromptLearningType::PromptTuning;
}

// A fresh prompt-learning adapter of cfg (TEXT init: tokens of its text, special tokens included, as PEFT
// tokenizes it).
PromptLearningModel create_prompt(const LlamaModel& model, PromptLearningConfig cfg, uint64_t seed,
                                  const Tokenizer& tok) {
  std::vector<int32_t> init_ids;
  if (cfg.peft_type == PromptLearningType::PromptTuning && cfg.prompt_tuning_init == "TEXT") {
    init_ids = tok.encode(cfg.prompt_tuning_init_text, true);
    if (init_ids.empty())
      throw_error(ErrorKind::Usage, "--prompt-tuning-init-text encodes to no tokens; give some text");
  }
  return PromptLearningModel::create(model, cfg, seed, init_ids);
}

}  // namespace

void PeftBatch::apply(StepOptions& so) const {
  if (prompt) {
    prompt->apply(so);
    return;
  }
  so.positions = &mb->positions;
  so.seq_ids = &mb->seq_ids;
  so.inputs_embeds = nullptr;
  so.d_inputs_embeds = nullptr;
  so.prefixes = nullptr;
}

PeftBatch PeftSession::prepare(const MicroBatch& mb, bool) const {
  PeftBatch b;
  b.mb = &mb;
  b.targets = mb.targets;
  return b;
}

const char* peft_kind_name(PeftKind k) {
  switch (k) {
    case PeftKind::Lora:
      return "lora";
    case PeftKind::Ia3:
      return "ia3";
    case PeftKind::Bottleneck:
      return "bottleneck";
    case PeftKind::PromptTuning:
      return "prompt_tuning";
    case PeftKind::PTuning:
      return "p_tuning";
    case PeftKind::PrefixTuning:
      return "prefix_tuning";
    case PeftKind::AdaptionPrompt:
      return "adaption_prompt";
    case PeftKind::Full:
      return "full";
  }
  return "?";
}

PeftKind peft_kind_from_name(const std::string& name, const std::string& what) {
  const std::string n = lower(name);
  for (PeftKind k : {PeftKind::Lora, PeftKind::Ia3, PeftKind::Bottleneck, PeftKind::PromptTuning,
                     PeftKind::PTuning, PeftKind::PrefixTuning, PeftKind::AdaptionPrompt, PeftKind::Full})
    if (n == peft_kind_name(k)) return k;
  throw_error(
      ErrorKind::Usage, what, " '", name,
      "' cannot be trained: expected lora, ia3, bottleneck, prompt_tuning, p_tuning, prefix_tuning, "
      "adaption_prompt or full");
}

bool is_prompt_kind(PeftKind k) {
  return k == PeftKind::PromptTuning || k == PeftKind::PTuning || k == PeftKind::PrefixTuning;
}

PeftKind training_peft_kind(const TrainerArgs& a) {
  if (a.adapter_dir.empty()) return a.peft_type.empty() ? PeftKind::Lora : peft_kind_from_name(a.peft_type);
  const std::string type = read_peft_type(a.adapter_dir);
  const PeftKind k =
      peft_kind_from_name(type, path_join(a.adapter_dir, "adapter_config.json") + ": peft_type");
  if (!a.peft_type.empty() && peft_kind_from_name(a.peft_type) != k)
    throw_error(ErrorKind::Usage, "--peft-type ", a.peft_type, " but --adapter ", a.adapter_dir, " holds a ",
                type, " adapter; leave out --peft-type to continue it");
  return k;
}

void check_peft_args(const TrainerArgs& a, PeftKind k) {
  const std::string type = peft_kind_name(k);
  if (k == PeftKind::Full) {
    if (!a.adapter_dir.empty())
      throw_error(ErrorKind::Usage, "--full-finetune trains the model itself: --adapter does not apply");
    if (a.load.load_in_4bit || a.load.load_in_8bit)
      throw_error(ErrorKind::Usage,
                  "--full-finetune needs 16/32-bit weights: 4/8-bit weights cannot train (use an adapter, "
                  "e.g. QLoRA)");
    return;
  }
  if (k == PeftKind::Lora && a.adapter_dir.empty()) a.lora.validate("finetune: ");
  if (!a.adapter_dir.empty()) return;  // the folder's settings rule
  if (k == PeftKind::Bottleneck) {
    BottleneckConfig c = a.bottleneck;
    c.apply_defaults("finetune --peft-type bottleneck: ");
  }
  if (k == PeftKind::AdaptionPrompt) {
    if (a.adaption.adapter_len <= 0)
      throw_error(ErrorKind::Usage, "--adapter-len must be > 0, got ", a.adaption.adapter_len);
    if (a.adaption.adapter_layers <= 0)
      throw_error(ErrorKind::Usage, "--adapter-layers must be > 0, got ", a.adaption.adapter_layers);
  }
  if (!is_prompt_kind(k)) return;
  const PromptLearningConfig& p = a.prompt;
  if (a.packing)
    throw_error(ErrorKind::Usage, "--packing cannot be used with --peft-type ", type,
                ": PEFT puts the virtual tokens before a whole row (there are no per-example virtual "
                "tokens); leave out --packing");
  if (p.num_virtual_tokens <= 0)
    throw_error(ErrorKind::Usage, "--num-virtual-tokens must be > 0, got ", p.num_virtual_tokens);
  if (p.encoder_hidden_size < 0)
    throw_error(ErrorKind::Usage, "--encoder-hidden-size must be > 0, got ", p.encoder_hidden_size);
  if (k == PeftKind::PromptTuning) {
    if (p.prompt_tuning_init == "TEXT" && p.prompt_tuning_init_text.empty())
      throw_error(ErrorKind::Usage, "--prompt-tuning-init text needs --prompt-tuning-init-text TEXT");
    if (p.prompt_tuning_init != "TEXT" && !p.prompt_tuning_init_text.empty())
      throw_error(ErrorKind::Usage,
                  "--prompt-tuning-init-text is used only with --prompt-tuning-init text (got ",
                  lower(p.prompt_tuning_init), ")");
  }
  if (p.prefix_projection && k != PeftKind::PrefixTuning)
    throw_error(ErrorKind::Usage, "--prefix-projection is a prefix_tuning setting, not ", type);
}

std::unique_ptr<PeftSession> create_peft_session(LlamaModel& model, const TrainerArgs& a,
                                                 const Tokenizer& tok) {
  const PeftKind k = training_peft_kind(a);
  switch (k) {
    case PeftKind::Lora:
      return std::make_unique<LoraSession>(model, LoraModel::create(model, a.lora, a.seed), a.seed);
    case PeftKind::Ia3:
      return std::make_unique<Ia3Session>(Ia3Model::create(model, a.ia3));
    case PeftKind::Bottleneck:
      return std::make_unique<BottleneckSession>(BottleneckModel::create(model, a.bottleneck, a.seed));
    case PeftKind::AdaptionPrompt:
      return std::make_unique<AdaptionSession>(AdaptionPromptModel::create(model, a.adaption, a.seed));
    case PeftKind::Full:
      return std::make_unique<FullSession>(model, a.model_dir);
    default: {
      PromptLearningConfig cfg = a.prompt;
      cfg.peft_type = prompt_type(k);
      return std::make_unique<PromptSession>(model, create_prompt(model, cfg, a.seed, tok), k);
    }
  }
}

std::unique_ptr<PeftSession> load_peft_session(LlamaModel& model, const std::string& dir, PeftKind k,
                                               const TrainerArgs& a, const Tokenizer& tok, bool checkpoint) {
  if (k == PeftKind::Full) {  // a checkpoint: the model folder it wrote
    if (!path_is_file(path_join(dir, "config.json")))
      throw_error(ErrorKind::Usage, dir, " holds no model folder (config.json), but this run is --full-finetune",
                  checkpoint ? " (a checkpoint of another run in --out?)" : "");
    auto s = std::make_unique<FullSession>(model, a.model_dir);
    s->load_state(dir);
    return s;
  }
  const std::string type = read_peft_type(dir);
  if (peft_kind_from_name(type, path_join(dir, "adapter_config.json") + ": peft_type") != k)
    throw_error(ErrorKind::Usage, dir, " holds a ", type, " adapter, but this run trains ", peft_kind_name(k),
                checkpoint ? " (a checkpoint of another run in --out?)" : "");
  switch (k) {
    case PeftKind::Lora:
      return std::make_unique<LoraSession>(model, LoraModel::load(model, dir), a.seed);
    case PeftKind::Ia3:
      return std::make_unique<Ia3Session>(Ia3Model::load(model, dir));
    case PeftKind::Bottleneck:
      return std::make_unique<BottleneckSession>(BottleneckModel::load(model, dir));
    case PeftKind::AdaptionPrompt:  // the folder holds every trained tensor
      return std::make_unique<AdaptionSession>(AdaptionPromptModel::load(model, dir));
    default:
      break;
  }
  // Prompt types. A folder holds only the encoder's output: continuing one (--adapter) trains that output
  // directly; a checkpoint of a fresh run rebuilds the encoder from the folder's config, and load_state
  // restores every trained tensor.
  std::unique_ptr<PeftSession> s;
  if (!checkpoint || !a.adapter_dir.empty()) {
    s = std::make_unique<PromptSession>(model, PromptLearningModel::load(model, dir), k);
  } else {
    const std::string cfg_path = path_join(dir, "adapter_config.json");
    PromptLearningConfig cfg = read_prompt_learning_config(cfg_path);
    cfg.validate(model.config(), cfg_path + ": ");
    s = std::make_unique<PromptSession>(model, create_prompt(model, cfg, a.seed, tok), k);
  }
  if (checkpoint) s->load_state(dir);
  return s;
}

}  // namespace qtune
