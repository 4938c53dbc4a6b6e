// Merging a PEFT adapter into its base and writing the merged model folder (see merge_folder.h).
#include "peft/merge_folder.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "core/error.h"
#include "io/json_util.h"
#include "model/llama_model.h"
#include "model/quant_linear.h"
#include "model/quant_load.h"
#include "peft/lora_model.h"

namespace qtune {

namespace fs = std::filesystem;

namespace {

// The model's tensors under their HF names, in transformers' state_dict order (lm_head last, left out
// when it is tied to the embedding).
std::vector<std::pair<std::string, Tensor>> named_tensors(const LlamaModel& m, bool with_lm_head) {
  std::vector<std::pair<std::string, Tensor>> out;
  out.emplace_back("model.embed_tokens.weight", m.embed_tokens());  // [V, C]
  for (size_t i = 0; i < m.layers().size(); ++i) {
    const LlamaLayer& L = m.layers()[i];
    for (const Linear* lin : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) {
      out.emplace_back(lin->name + ".weight", lin->weight);  // [O, I]
      if (lin->bias.defined()) out.emplace_back(lin->name + ".bias", lin->bias);
    }
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.emplace_back(p + "input_layernorm.weight", L.input_norm);
    out.emplace_back(p + "post_attention_layernorm.weight", L.post_norm);
  }
  out.emplace_back("model.norm.weight", m.final_norm());
  if (with_lm_head) out.emplace_back("lm_head.weight", m.lm_head().weight);
  return out;
}

bool same_folder(const std::string& a, const std::string& b) {
  std::error_code ec;
  return fs::exists(a, ec) && fs::exists(b, ec) && fs::equivalent(a, b, ec);
}

}  // namespace

MergeReport merge_adapter_folder(const std::string& base_dir, const std::string& adapter_dir,
                                 const std::string& out_dir, const MergeOptions& opts) {
  if (!path_is_dir(adapter_dir))
    throw_error(ErrorKind::Io, "adapter folder ", adapter_dir, " does not exist");
  if (same_folder(out_dir, base_dir) || same_folder(out_dir, adapter_dir))
    throw_error(ErrorKind::Usage, "merge: --out ", out_dir, " must differ from --model and --adapter");
  const std::string cfg_path = path_join(base_dir, "config.json");
  nlohmann::json cfg =
      parse_json_text(read_text_file(cfg_path, ErrorKind::Config), cfg_path, ErrorKind::Config);

  MergeReport rep;
  LlamaModel model = LlamaModel::load(base_dir, Device::CPU);
  // A quantized base: the dense weights PEFT's merge starts from (bitsandbytes' dequantization, in the
  // checkpoint's dtype for 4-bit), then F32 like every CPU weight.
  for (auto& [name, lin] : linear_modules(model)) {
    if (lin->q4) {
      lin->weight = dequantize_4bit(lin->q4->q).to_dtype(DType::F32);  // [O, I]
      lin->q4.reset();
    } else if (lin->q8) {
      lin->weight = int8_vectorwise_dequant(lin->q8->w);  // [O, I]
      lin->q8.reset();
    } else {
      continue;
    }
    rep.dequantized_linears++;
  }

  LoraModel lora = LoraModel::load(model, adapter_dir);
  rep.merged_layers = (int64_t)lora.layers().size();
  lora.merge();
  rep.replaced_tensors = (int64_t)lora.trainable().size();  // what merge leaves: biases, modules_to_save

  // A tied head stays tied unless the adapter gave lm_head or the embedding its own values.
  const bool tied = model.config().tie_word_embeddings;
  rep.untied = tied && model.lm_head().weight.raw() != model.embed_tokens().raw();
  rep.dtype = opts.dtype;
  if (!opts.dtype_given) rep.dtype = model.config().torch_dtype == "float16" ? DType::F16 : DType::BF16;

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (!path_is_dir(out_dir)) throw_error(ErrorKind::Io, "cannot create the output folder ", out_dir);
  const std::vector<std::pair<std::string, Tensor>> tensors = named_tensors(model, !tied || rep.untied);
  std::vector<int64_t> bytes;
  for (const auto& kv : tensors) bytes.push_back((int64_t)dtype_nbytes(rep.dtype, kv.second.numel()));
  const std::vector<std::vector<size_t>> shards = plan_shards(bytes, opts.max_shard_bytes);
  rep.shards = (int)shards.size();
  rep.tensors = (int64_t)tensors.size();
  rep.bytes_out = write_weight_shards(out_dir, rep.shards, [&](int i) {
    ShardTensors t;  // converted only now: one shard in memory at a time
    for (size_t g : shards[(size_t)i])
      t.emplace_back(tensors[g].first, tensors[g].second.to_dtype(rep.dtype));
    return t;
  });

  cfg.erase("quantization_config");
  bool has_dtype = false;
  for (const char* key : {"dtype", "torch_dtype"})
    if (cfg.contains(key)) {
      cfg[key] = torch_dtype_name(rep.dtype);
      has_dtype = true;
    }
  if (!has_dtype) cfg["dtype"] = torch_dtype_name(rep.dtype);
  if (rep.untied) cfg["tie_word_embeddings"] = false;
  write_text_file(path_join(out_dir, "config.json"), cfg.dump(2) + "\n");
  copy_model_side_files(base_dir, out_dir);
  return rep;
}

}  // namespace qtune
