// Post-processors: see post_processor.h.
#include "tokenizer/post_processor.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace qtune {

using json = nlohmann::json;

namespace {

class AffixPostProcessor : public PostProcessor {
 public:
  std::vector<int32_t> prefix, suffix;
  void process(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), prefix.begin(), prefix.end());
    ids.insert(ids.end(), suffix.begin(), suffix.end());
  }
};

// The single-sequence template as a list of items: a run of special ids, or the sequence itself (empty).
class TemplatePostProcessor : public PostProcessor {
 public:
  std::vector<std::vector<int32_t>> items;  // empty vector marks the sequence
  void process(std::vector<int32_t>& ids) const override {
    std::vector<int32_t> out;
    for (auto& it : items) {
      if (it.empty())
        out.insert(out.end(), ids.begin(), ids.end());
      else
        out.insert(out.end(), it.begin(), it.end());
    }
    ids.swap(out);
  }
};

class NoopPostProcessor : public PostProcessor {
 public:
  void process(std::vector<int32_t>&) const override {}
};

class SequencePostProcessor : public PostProcessor {
 public:
  std::vector<std::unique_ptr<PostProcessor>> parts;
  void process(std::vector<int32_t>& ids) const override {
    for (auto& p : parts) p->process(ids);
  }
};

std::unique_ptr<PostProcessor> make_template(const json& j, const std::string& source) {
  auto t = std::make_unique<TemplatePostProcessor>();
  const json& specials = j.value("special_tokens", json::object());
  for (const json& item : j.at("single")) {
    if (item.contains("Sequence")) {
      t->items.emplace_back();
    } else if (item.contains("SpecialToken")) {
      std::string name = item.at("SpecialToken").at("id").get<std::string>();
      if (!specials.contains(name))
        throw_error(ErrorKind::Format, source, ": post_processor template names special token \"", name,
                    "\" missing from special_tokens");
      std::vector<int32_t> ids = specials.at(name).at("ids").get<std::vector<int32_t>>();
      if (ids.empty()) continue;
      t->items.push_back(ids);
    } else {
      throw_error(ErrorKind::Format, source, ": bad post_processor template item ", item.dump());
    }
  }
  return t;
}

}  // namespace

std::unique_ptr<PostProcessor> make_affix_post_processor(std::vector<int32_t> prefix,
                                                         std::vector<int32_t> suffix) {
  auto a = std::make_unique<AffixPostProcessor>();
  a->prefix = std::move(prefix);
  a->suffix = std::move(suffix);
  return a;
}

std::unique_ptr<PostProcessor> make_post_processor(const json& j, const std::string& source) {
  if (j.is_null()) return nullptr;
  std::string type = j.at("type").get<std::string>();
  if (type == "TemplateProcessing") return make_template(j, source);
  if (type == "ByteLevel") return std::make_unique<NoopPostProcessor>();
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    int32_t cls = j.at("cls").at(1).get<int32_t>(), sep = j.at("sep").at(1).get<int32_t>();
    return make_affix_post_processor({cls}, {sep});
  }
  if (type == "Sequence") {
    auto s = std::make_unique<SequencePostProcessor>();
    for (const json& p : j.at("processors")) {
      auto q = make_post_processor(p, source);
      if (q) s->parts.push_back(std::move(q));
    }
    return s;
  }
  throw_error(
      ErrorKind::Unsupported, source, ": post_processor type \"", type,
      "\" is not supported (supported: TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, "
      "Sequence)");
}

}  // namespace qtune
