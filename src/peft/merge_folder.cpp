// Merging a PEFT adapter into its base and writing the merged model folder (see merge_folder.h).
#include "peft/merge_folder.h"

#include <filesystem>
#include <utility>
#include <vector>

#include "core/error.h"
#include "io/json_util.h"
#include "model/llama_model.h"
#include "model/model_writer.h"
#include "model/quant_linear.h"
#include "model/quant_load.h"
#include "peft/lora_model.h"

namespace qtune {

namespace fs = std::filesystem;

namespace {

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

  const ModelFolderWritten w = write_model_folder(model_state_dict(model, !tied || rep.untied), base_dir, out_dir,
                                                  rep.dtype, opts.max_shard_bytes, rep.untied);
  rep.shards = w.shards;
  rep.tensors = w.tensors;
  rep.bytes_out = w.bytes_out;
  return rep;
}

}  // namespace qtune
