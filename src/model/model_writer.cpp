// write_model_folder / model_state_dict (see model_writer.h).
#include "model/model_writer.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_util.h"
#include "io/model_folder.h"
#include "model/quant_load.h"

namespace qtune {

NamedTensors model_state_dict(const LlamaModel& m, bool with_lm_head) {
  NamedTensors out;
  auto linear = [&](const Linear& lin) {
    if (lin.quantized())
      throw_error(ErrorKind::Unsupported, lin.name, " is quantized: only dense weights are written here");
    out.emplace_back(lin.name + ".weight", lin.weight);  // [O, I]
    if (lin.bias.defined()) out.emplace_back(lin.name + ".bias", lin.bias);
  };
  out.emplace_back("model.embed_tokens.weight", m.embed_tokens());  // [V, C]
  for (size_t i = 0; i < m.layers().size(); ++i) {
    const LlamaLayer& L = m.layers()[i];
    for (const Linear* lin : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) linear(*lin);
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.emplace_back(p + "input_layernorm.weight", L.input_norm);
    out.emplace_back(p + "post_attention_layernorm.weight", L.post_norm);
  }
  out.emplace_back("model.norm.weight", m.final_norm());
  if (with_lm_head) linear(m.lm_head());
  return out;
}

ModelFolderWritten write_model_folder(const NamedTensors& tensors, const std::string& src_dir,
                                      const std::string& out_dir, DType dtype, int64_t max_shard_bytes,
                                      bool untie_embeddings) {
  const std::string cfg_path = path_join(src_dir, "config.json");
  nlohmann::json cfg =
      parse_json_text(read_text_file(cfg_path, ErrorKind::Config), cfg_path, ErrorKind::Config);
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (!path_is_dir(out_dir)) throw_error(ErrorKind::Io, "cannot create the output folder ", out_dir);
  ModelFolderWritten w;
  std::vector<int64_t> bytes;
  for (const auto& kv : tensors) bytes.push_back((int64_t)dtype_nbytes(dtype, kv.second.numel()));
  const std::vector<std::vector<size_t>> shards = plan_shards(bytes, max_shard_bytes);
  w.shards = (int)shards.size();
  w.tensors = (int64_t)tensors.size();
  w.bytes_out = write_weight_shards(out_dir, w.shards, [&](int i) {
    ShardTensors t;  // converted only now: one shard in memory at a time
    for (size_t g : shards[(size_t)i])
      t.emplace_back(tensors[g].first, tensors[g].second.to(Device::CPU).to_dtype(dtype));
    return t;
  });
  cfg.erase("quantization_config");
  bool has_dtype = false;
  for (const char* key : {"dtype", "torch_dtype"})
    if (cfg.contains(key)) {
      cfg[key] = torch_dtype_name(dtype);
      has_dtype = true;
    }
  if (!has_dtype) cfg["dtype"] = torch_dtype_name(dtype);
  if (untie_embeddings) cfg["tie_word_embeddings"] = false;
  write_text_file(path_join(out_dir, "config.json"), cfg.dump(2) + "\n");
  copy_model_side_files(src_dir, out_dir);
  return w;
}

}  // namespace qtune
