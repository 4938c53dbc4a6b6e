// PeftAdapter: loading by peft_type, the LoRA wrapper (with reversible merge), and the folder helpers
// the adapter readers share (see peft_adapter.h).
#include "peft/peft_adapter.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/json_util.h"
#include "io/safetensors.h"
#include "ops/matmul.h"
#include "peft/bottleneck_model.h"
#include "peft/ia3_model.h"

namespace qtune {

namespace {

const char* kPrefix = "base_model.model.";

// LoRA as a PeftAdapter. Merging folds W += scale·B·A into each targeted Linear (computed in f32, rounded
// once to the weight's dtype) and takes the LoRA layers off; trained biases / modules_to_save stay applied.
class LoraAdapter : public PeftAdapter {
 public:
  LoraAdapter(LoraModel lora, LlamaModel& model) : lora_(std::move(lora)), model_(&model) {}
  const char* peft_type() const override { return "LORA"; }
  void attach() override {
    if (!merged_) lora_.refresh();
  }
  void detach() override {
    if (merged_) unmerge();
    lora_.detach();
  }
  void save(const std::string& dir) const override { lora_.save(dir); }
  bool can_merge() const override { return !lora_.config().use_dora; }
  bool merged() const override { return merged_; }
  void merge() override {
    if (merged_) return;
    if (lora_.config().use_dora)
      throw_error(ErrorKind::Unsupported,
                  "merge: DoRA adapters cannot be merged reversibly here (use qtune merge)");
    for (const auto& l : lora_.layers()) require_dense_weight(*find(l->module), "merge LoRA");  // all or none
    lora_.refresh();  // extras in place
    fold(+1.0f);
    merged_ = true;
  }
  void unmerge() override {
    if (!merged_) return;
    fold(-1.0f);
    merged_ = false;
    lora_.refresh();
  }
  LoraModel& lora() { return lora_; }

 private:
  Linear* find(const std::string& module) {
    for (auto& [n, lin] : linear_modules(*model_))
      if (n == module) return lin;
    throw_error(ErrorKind::Internal, "LoRA module ", module, " is not in the model");
  }
  void fold(float sign) {
    for (const auto& l : lora_.layers()) {
      Linear* lin = find(l->module);
      Tensor w = dense_weight_copy(*lin, "merge LoRA");                   // [O, I]
      matmul(w, l->B, l->A, false, false, sign * (float)l->scale, 1.0f);  // W ± scale·B[O, r]·A[r, I]
      lin->weight = like_model_tensor(w, lin->weight);
      lin->adapter.reset();
    }
  }

  LoraModel lora_;
  LlamaModel* model_;
  bool merged_ = false;
};

std::string join(const std::vector<std::string>& v, size_t max_items) {
  std::ostringstream os;
  for (size_t i = 0; i < v.size() && i < max_items; ++i) os << (i ? ", " : "") << v[i];
  if (v.size() > max_items) os << ", ... (" << v.size() << " in all)";
  return os.str();
}

}  // namespace

void PeftAdapter::merge() {
  throw_error(ErrorKind::Unsupported, "merge: ", peft_type(),
              " adapters cannot be merged into the base weights");
}

void PeftAdapter::unmerge() {
  throw_error(ErrorKind::Unsupported, "unmerge: ", peft_type(), " adapters are never merged");
}

std::string read_peft_type(const std::string& dir) {
  const AdapterFiles f = adapter_files(dir);
  nlohmann::json j = parse_json_text(read_text_file(f.config, ErrorKind::Io), f.config, ErrorKind::Format);
  return json_peft_type(j, f.config);
}

std::unique_ptr<PeftAdapter> load_peft_adapter(LlamaModel& model, const std::string& dir) {
  const std::string type = read_peft_type(dir);
  if (type == "LORA") return wrap_lora(LoraModel::load(model, dir), model);
  if (type == "IA3") return std::make_unique<Ia3Model>(Ia3Model::load(model, dir));
  if (type == "BOTTLENECK") return std::make_unique<BottleneckModel>(BottleneckModel::load(model, dir));
  throw_error(ErrorKind::Unsupported, adapter_files(dir).config, ": peft_type '", type,
              "' is not supported here (LORA, IA3, BOTTLENECK)");
}

std::unique_ptr<PeftAdapter> wrap_lora(LoraModel lora, LlamaModel& model) {
  return std::make_unique<LoraAdapter>(std::move(lora), model);
}

LoraModel& lora_of(PeftAdapter& a) {
  auto* l = dynamic_cast<LoraAdapter*>(&a);
  if (!l) throw_error(ErrorKind::Usage, "expected a LoRA adapter, got ", a.peft_type());
  return l->lora();
}

AdapterFiles adapter_files(const std::string& dir) {
  AdapterFiles f{path_join(dir, "adapter_config.json"), path_join(dir, "adapter_model.safetensors")};
  if (!path_is_dir(dir)) throw_error(ErrorKind::Io, "adapter folder ", dir, " does not exist");
  if (!path_is_file(f.config)) throw_error(ErrorKind::Io, "no adapter_config.json in adapter folder ", dir);
  if (!path_is_file(f.safetensors)) {
    if (path_is_file(path_join(dir, "adapter_model.bin")))
      throw_error(ErrorKind::Unsupported, dir,
                  ": adapter_model.bin (pickle) is not supported; save with safetensors");
    throw_error(ErrorKind::Io, "no adapter_model.safetensors in adapter folder ", dir);
  }
  return f;
}

AdapterTensorReader::AdapterTensorReader(const std::string& path, int64_t hidden_size)
    : path_(path), hidden_(hidden_size), file_(SafetensorsFile::open(path)) {}

Tensor AdapterTensorReader::fetch(const std::string& key, const Shape& want, const std::string& why) {
  const std::string full = kPrefix + key;
  if (!file_->has(full)) throw_error(ErrorKind::Format, path_, ": missing tensor '", full, "' (", why, ")");
  Tensor t = file_->get(full);
  if (t.shape() != want)
    throw_error(ErrorKind::Format, path_, ": tensor '", full, "' has shape ", shape_str(t.shape()),
                ", expected ", shape_str(want), " (", why,
                "); the adapter does not fit this base model (hidden size ", hidden_,
                ") or adapter_config.json");
  if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
    throw_error(ErrorKind::Format, path_, ": tensor '", full, "' has dtype ", dtype_name(t.dtype()),
                ", expected F32, BF16 or F16");
  used_.insert(full);
  return t.to_dtype(DType::F32).clone();
}

void AdapterTensorReader::reject_unused() const {
  std::vector<std::string> extra;
  for (const TensorInfo& ti : file_->tensors())
    if (!used_.count(ti.name)) extra.push_back(ti.name);
  if (!extra.empty())
    throw_error(ErrorKind::Format, path_,
                ": tensors that match nothing in adapter_config.json and this model: ", join(extra, 5));
}

void write_adapter_tensors(const std::string& dir, std::vector<std::pair<std::string, Tensor>> tensors) {
  if (tensors.empty())
    throw_error(ErrorKind::Usage, "refusing to write adapter ", dir, ": it has no tensors");
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw_error(ErrorKind::Io, "cannot create adapter folder ", dir, ": ", ec.message());
  write_safetensors(path_join(dir, "adapter_model.safetensors"), tensors, {{"format", "pt"}});
}

void require_dense_weight(const Linear& lin, const char* what) {
  if (lin.quantized() || !lin.weight.defined())
    throw_error(ErrorKind::Unsupported, what, ": ", lin.name,
                " has a quantized weight (merging needs 16- or 32-bit weights, as in PEFT)");
}

Tensor dense_weight_copy(const Linear& lin, const char* what) {
  require_dense_weight(lin, what);
  return lin.weight.to(Device::CPU).to_dtype(DType::F32).clone();
}

Tensor like_model_tensor(const Tensor& f32_cpu, const Tensor& like) {
  Tensor t = f32_cpu.to_dtype(like.dtype());
  if (like.device() == Device::CPU) return t.dtype() == DType::F32 ? t.clone() : t;
  return t.to(like.device());
}

}  // namespace qtune
