// PromptAdapter: dispatch by peft_type, attach/detach (see prompt_adapter.h).
#include "peft/prompt_adapter.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_util.h"

namespace qtune {

bool PromptAdapter::handles(const std::string& t) {
  return is_prompt_learning_type(t) || t == "ADAPTION_PROMPT";
}

PromptAdapter::PromptAdapter(LlamaModel& model, PromptLearningModel pl)
    : model_(model), pl_(std::make_unique<PromptLearningModel>(std::move(pl))) {
  vt_ = std::make_shared<const VirtualTokens>(pl_->virtual_tokens());
  attach();
}

PromptAdapter::PromptAdapter(LlamaModel& model, AdaptionPromptModel ap)
    : model_(model), ap_(std::make_unique<AdaptionPromptModel>(std::move(ap))) {
  attach();
}

PromptAdapter::~PromptAdapter() = default;

const char* PromptAdapter::peft_type() const {
  return pl_ ? prompt_learning_type_name(pl_->config().peft_type) : "ADAPTION_PROMPT";
}

void PromptAdapter::attach() {
  if (pl_) model_.set_virtual_tokens(vt_);
  if (ap_) ap_->refresh();
}

void PromptAdapter::detach() {
  if (pl_ && model_.virtual_tokens() == vt_.get()) model_.set_virtual_tokens(nullptr);
  if (ap_) ap_->detach();
}

void PromptAdapter::save(const std::string& dir) const {
  if (pl_) pl_->save(dir);
  if (ap_) ap_->save(dir);
}

bool is_prompt_adapter_folder(const std::string& dir) {
  try {
    nlohmann::json j =
        nlohmann::json::parse(read_text_file(path_join(dir, "adapter_config.json"), ErrorKind::Io));
    auto it = j.find("peft_type");
    return it != j.end() && it->is_string() && PromptAdapter::handles(it->get<std::string>());
  } catch (const std::exception&) {
    return false;
  }
}

std::unique_ptr<PromptAdapter> load_prompt_adapter(LlamaModel& model, const std::string& dir) {
  const std::string path = path_join(dir, "adapter_config.json");
  if (!path_is_dir(dir)) throw_error(ErrorKind::Io, "adapter folder ", dir, " does not exist");
  if (!path_is_file(path)) throw_error(ErrorKind::Io, "no adapter_config.json in adapter folder ", dir);
  nlohmann::json j = parse_json_text(read_text_file(path, ErrorKind::Io), path, ErrorKind::Format);
  const std::string type = json_peft_type(j, path);
  if (!PromptAdapter::handles(type))
    throw_error(ErrorKind::Unsupported, path, ": peft_type '", type,
                "' is not a prompt-style adapter (PROMPT_TUNING, P_TUNING, PREFIX_TUNING, ADAPTION_PROMPT)");
  if (type == "ADAPTION_PROMPT")
    return std::make_unique<PromptAdapter>(model, AdaptionPromptModel::load(model, dir));
  return std::make_unique<PromptAdapter>(model, PromptLearningModel::load(model, dir));
}

}  // namespace qtune
