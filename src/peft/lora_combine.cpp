// combine_lora_adapters: PEFT's add_weighted_adapter, "linear" and "cat" (see lora_combine.h).
#include "peft/lora_combine.h"

#include <cmath>
#include <cstring>

#include "core/error.h"

namespace qtune {

namespace {

const LoraLayer* layer_for(const LoraModel& m, const std::string& module) {
  for (const auto& l : m.layers())
    if (l->module == module) return l.get();
  return nullptr;
}

void add_unique(std::vector<std::string>& v, const std::string& s) {
  for (const std::string& x : v)
    if (x == s) return;
  v.push_back(s);
}

}  // namespace

LoraModel combine_lora_adapters(LlamaModel& model, const std::vector<const LoraModel*>& adapters,
                                const std::vector<std::string>& names, const std::vector<double>& weights,
                                const std::string& combination_type) {
  const size_t n = adapters.size();
  if (n == 0) throw_error(ErrorKind::Usage, "add_weighted_adapter: no adapters given");
  if (weights.size() != n || names.size() != n)
    throw_error(ErrorKind::Config, "add_weighted_adapter: ", n, " adapters but ", weights.size(), " weights");
  const std::string kind = n == 1 ? "linear" : combination_type;  // PEFT: one adapter is always linear
  if (kind != "linear" && kind != "cat")
    throw_error(ErrorKind::Unsupported, "add_weighted_adapter: combination_type '", combination_type,
                "' is not implemented (linear, cat)");
  bool regex = false, lists = false;
  for (size_t i = 0; i < n; ++i) {
    const LoraConfig& c = adapters[i]->config();
    auto refuse = [&](const char* what) {
      throw_error(ErrorKind::Unsupported, "add_weighted_adapter: adapter '", names[i], "' uses ", what,
                  ", which cannot be combined");
    };
    if (c.use_dora) refuse("DoRA");
    if (c.bias != LoraBias::None) refuse("trained biases");
    if (!c.modules_to_save.empty()) refuse("modules_to_save");
    if (!c.rank_pattern.empty()) refuse("rank_pattern");
    (c.target_regex.empty() ? lists : regex) = true;
  }
  if (regex && lists)
    throw_error(
        ErrorKind::Config,
        "add_weighted_adapter: the adapters mix target_modules lists and regex strings (PEFT refuses too)");
  int64_t new_rank = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t r = adapters[i]->config().r;
    if (kind == "linear" && r != adapters[0]->config().r)
      throw_error(ErrorKind::Config, "add_weighted_adapter: combination_type linear needs equal ranks; '",
                  names[0], "' has r=", adapters[0]->config().r, ", '", names[i], "' has r=", r);
    new_rank = kind == "linear" ? r : new_rank + r;
  }
  LoraConfig cfg = adapters[0]->config();
  cfg.r = new_rank;
  cfg.lora_alpha = (double)new_rank;
  cfg.rank_pattern.clear();
  cfg.alpha_pattern.clear();
  cfg.lora_dropout = adapters[0]->config().lora_dropout;
  cfg.target_modules.clear();
  cfg.target_regex.clear();
  cfg.all_linear = false;
  for (size_t i = 0; i < n; ++i) {
    const LoraConfig& c = adapters[i]->config();
    if (regex) {
      cfg.target_regex += (i ? "|(" : "(") + c.target_regex + ")";
    } else {
      for (const std::string& t : c.all_linear ? adapters[i]->targets() : c.target_modules)
        add_unique(cfg.target_modules, t);
    }
  }
  LoraModel out = LoraModel::create(model, cfg, 0);
  for (const auto& l : out.layers()) {
    const int64_t I = l->A.size(1), O = l->B.size(0);
    std::memset(l->A.data<float>(), 0, l->A.nbytes());
    std::memset(l->B.data<float>(), 0, l->B.nbytes());
    float* A = l->A.data<float>();  // [new_rank, I]
    float* B = l->B.data<float>();  // [O, new_rank]
    int64_t row = 0;
    for (size_t i = 0; i < n; ++i) {
      const LoraLayer* src = layer_for(*adapters[i], l->module);
      if (!src) continue;
      const int64_t r = src->r;
      const double c = weights[i] * src->scale;
      const float* a = src->A.data<float>();  // [r, I]
      const float* b = src->B.data<float>();  // [O, r]
      if (kind == "cat") {
        for (int64_t k = 0; k < r * I; ++k) A[row * I + k] = (float)(a[k] * c);
        for (int64_t o = 0; o < O; ++o)
          for (int64_t k = 0; k < r; ++k) B[o * new_rank + row + k] = b[o * r + k];
        row += r;
      } else {
        const double wb = std::sqrt(std::fabs(c)), wa = c >= 0 ? wb : -wb;
        for (int64_t k = 0; k < r * I; ++k) A[k] += (float)(wa * a[k]);
        for (int64_t k = 0; k < O * r; ++k) B[k] += (float)(wb * b[k]);
      }
    }
  }
  out.refresh();
  return out;
}

}  // namespace qtune
