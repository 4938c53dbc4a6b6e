// PeftAdapter: one adapter of any kind on a LlamaModel, as `generate --adapter` and several-adapters code
// (adapter_set.h) see it: attach / detach (active or not), save, merge / unmerge into the base weights.
// LoRA (lora_model.h), IA3 (ia3_model.h) and bottleneck adapters (bottleneck_model.h) implement it;
// load_peft_adapter picks the kind by adapter_config.json's peft_type.
//
//   std::unique_ptr<PeftAdapter> a = load_peft_adapter(model, "out/adapter");   // attached
//   a->detach();   // base model again
//
// Also the folder plumbing the readers share: file presence checks and tensor fetching with errors that
// name the file, the tensor, the expected shape and the model's hidden size.
#pragma once
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "model/llama_model.h"
#include "peft/lora_model.h"

namespace qtune {

class SafetensorsFile;

class PeftAdapter {
 public:
  virtual ~PeftAdapter() = default;
  virtual const char* peft_type() const = 0;  // "LORA", "IA3", "BOTTLENECK"
  // Puts its layers on the model's Linears (the adapter is in effect) / takes them off (base model).
  virtual void attach() = 0;
  virtual void detach() = 0;
  // Writes dir/adapter_config.json and dir/adapter_model.safetensors.
  virtual void save(const std::string& dir) const = 0;
  // Folding into the (F32 CPU or BF16 CUDA, not quantized) base weights, reversibly as PEFT does: after
  // merge() the model computes the adapted function with no adapter on its Linears; unmerge() restores the
  // weights (up to the rounding of the weights' dtype) and re-attaches. Kinds that cannot merge throw
  // ErrorKind::Unsupported.
  virtual bool can_merge() const { return false; }
  virtual void merge();
  virtual void unmerge();
  virtual bool merged() const { return false; }
};

// adapter_config.json's peft_type (throws ErrorKind::Io / Format naming the file when it is missing).
std::string read_peft_type(const std::string& dir);

// Loads dir by its peft_type: LORA, IA3 or BOTTLENECK (attached). Any other peft_type throws
// ErrorKind::Unsupported naming adapter_config.json and the supported kinds.
std::unique_ptr<PeftAdapter> load_peft_adapter(LlamaModel& model, const std::string& dir);

// A LoraModel (lora_model.h) as a PeftAdapter; merge/unmerge W ± scale·B·A (not DoRA). model must be
// the one lora was made on.
std::unique_ptr<PeftAdapter> wrap_lora(LoraModel lora, LlamaModel& model);
LoraModel& lora_of(PeftAdapter& a);  // throws ErrorKind::Usage when a is not a LoRA adapter

// --- shared by the readers -----------------------------------------------------------------------------

struct AdapterFiles {
  std::string config;       // dir/adapter_config.json
  std::string safetensors;  // dir/adapter_model.safetensors
};
// Checks that dir holds both files (adapter_model.bin gets its own message); throws ErrorKind::Io.
AdapterFiles adapter_files(const std::string& dir);

// Reads adapter tensors by key (prefixed with "base_model.model."), checking shape and float dtype, as F32
// CPU copies; records the keys read so that unused() lists the rest.
class AdapterTensorReader {
 public:
  AdapterTensorReader(const std::string& path, int64_t hidden_size);
  // why: what fixes the shape (shown in errors, with the hidden size of the model).
  Tensor fetch(const std::string& key, const Shape& want, const std::string& why);
  // Throws ErrorKind::Format naming the file and up to five tensors that nothing read.
  void reject_unused() const;

 private:
  std::string path_;
  int64_t hidden_;
  std::shared_ptr<SafetensorsFile> file_;
  std::set<std::string> used_;
};

// Writes (name, F32 tensor) pairs sorted by name to path (atomic, metadata format=pt); refuses an empty set.
void write_adapter_tensors(const std::string& dir, std::vector<std::pair<std::string, Tensor>> tensors);

// The dense weight of a Linear as an owned F32 CPU copy / back into the Linear's dtype and device.
// Quantized weights throw ErrorKind::Unsupported naming the module and `what` (require_dense_weight checks
// only).
void require_dense_weight(const Linear& lin, const char* what);
Tensor dense_weight_copy(const Linear& lin, const char* what);
Tensor like_model_tensor(const Tensor& f32_cpu, const Tensor& like);

}  // namespace qtune
