// AdapterSet: named adapters on one base, one active at a time (see adapter_set.h).
#include "peft/adapter_set.h"

#include <sstream>

#include "core/error.h"
#include "peft/lora_combine.h"

namespace qtune {

AdapterSet::~AdapterSet() {
  try {
    disable();
  } catch (...) {  // leaving the base weights merged is better than terminating
  }
}

std::string AdapterSet::known() const {
  std::ostringstream os;
  for (size_t i = 0; i < adapters_.size(); ++i) os << (i ? ", " : "") << adapters_[i].first;
  return adapters_.empty() ? std::string("(none loaded)") : os.str();
}

std::vector<std::string> AdapterSet::names() const {
  std::vector<std::string> out;
  for (const auto& a : adapters_) out.push_back(a.first);
  return out;
}

PeftAdapter& AdapterSet::get(const std::string& name) {
  for (auto& a : adapters_)
    if (a.first == name) return *a.second;
  throw_error(ErrorKind::Usage, "no adapter named '", name, "' (loaded: ", known(), ")");
}

void AdapterSet::add(const std::string& name, std::unique_ptr<PeftAdapter> adapter) {
  if (name.empty()) throw_error(ErrorKind::Usage, "an adapter needs a non-empty name");
  for (const auto& a : adapters_)
    if (a.first == name) throw_error(ErrorKind::Usage, "an adapter named '", name, "' is already loaded");
  adapter->detach();
  adapters_.emplace_back(name, std::move(adapter));
  // Loading attached the new adapter's layers, replacing the active one's on shared Linears: re-attach.
  if (!active_.empty()) get(active_).attach();
}

void AdapterSet::load(const std::string& name, const std::string& dir) {
  if (merged()) throw_error(ErrorKind::Usage, "unmerge '", active_, "' before loading another adapter");
  for (const auto& a : adapters_)
    if (a.first == name) throw_error(ErrorKind::Usage, "an adapter named '", name, "' is already loaded");
  add(name, load_peft_adapter(model_, dir));
}

void AdapterSet::set_active(const std::string& name) {
  if (!name.empty()) get(name);  // checks the name first
  if (!active_.empty()) get(active_).detach();
  active_.clear();
  if (name.empty()) return;
  get(name).attach();
  active_ = name;
}

void AdapterSet::merge() {
  if (active_.empty()) throw_error(ErrorKind::Usage, "merge: no active adapter (set_active first)");
  get(active_).merge();
}

void AdapterSet::unmerge() {
  if (active_.empty()) throw_error(ErrorKind::Usage, "unmerge: no active adapter");
  get(active_).unmerge();
}

bool AdapterSet::merged() const {
  for (const auto& a : adapters_)
    if (a.first == active_) return a.second->merged();
  return false;
}

void AdapterSet::add_weighted_adapter(const std::vector<std::string>& names,
                                      const std::vector<double>& weights, const std::string& new_name,
                                      const std::string& combination_type) {
  for (const auto& a : adapters_)
    if (a.first == new_name)
      throw_error(ErrorKind::Usage, "an adapter named '", new_name, "' is already loaded");
  std::vector<const LoraModel*> loras;
  for (const std::string& n : names) {
    PeftAdapter& a = get(n);
    if (std::string(a.peft_type()) != "LORA")
      throw_error(ErrorKind::Unsupported, "add_weighted_adapter: '", n, "' is a ", a.peft_type(),
                  " adapter; only LoRA adapters combine");
    loras.push_back(&lora_of(a));
  }
  const std::string keep = active_;
  disable();  // the combination is created attached: start from the bare model
  LoraModel mix = combine_lora_adapters(model_, loras, names, weights, combination_type);
  add(new_name, wrap_lora(std::move(mix), model_));
  set_active(keep);
}

}  // namespace qtune
