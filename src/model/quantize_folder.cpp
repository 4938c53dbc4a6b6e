// Writing a bitsandbytes-layout quantized model folder (see quantize_folder.h).
#include "model/quantize_folder.h"

#include <filesystem>
#include <fstream>
#include <regex>

#include "core/error.h"
#include "io/json_util.h"
#include "io/safetensors.h"
#include "model/quant_linear.h"
#include "model/quant_load.h"
#include "quant/bnb_format.h"

namespace qtune {

namespace fs = std::filesystem;

namespace {

// Files save_pretrained / the tokenizer's save_pretrained put next to the weights.
const char* kCopied[] = {"tokenizer.json",
                         "tokenizer_config.json",
                         "tokenizer.model",
                         "special_tokens_map.json",
                         "added_tokens.json",
                         "vocab.json",
                         "merges.txt",
                         "chat_template.jinja",
                         "generation_config.json"};

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  if (!f) throw_error(ErrorKind::Io, "cannot write ", path);
}

}  // namespace

bool is_decoder_linear_weight(const std::string& name) {
  static const std::regex re(
      R"(model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight)");
  return std::regex_match(name, re);
}

QuantizeReport quantize_model_folder(const std::string& in, const std::string& out, const LoadOptions& opts,
                                     int64_t max_shard_bytes) {
  if (opts.load_in_4bit == opts.load_in_8bit)
    throw_error(ErrorKind::Usage, "quantize: choose exactly one of 4-bit and 8-bit");
  bool prequantized = false;
  read_quantization_config(in, &prequantized);
  if (prequantized)
    throw_error(ErrorKind::Usage, in, ": already quantized (config.json has a quantization_config)");
  const std::string cfg_path = path_join(in, "config.json");
  nlohmann::json cfg =
      parse_json_text(read_text_file(cfg_path, ErrorKind::Config), cfg_path, ErrorKind::Config);
  WeightStore store = WeightStore::open(in);
  if (fs::exists(out) && fs::equivalent(fs::path(in), fs::path(out)))
    throw_error(ErrorKind::Usage, "quantize: --out must differ from --model (", in, ")");
  std::error_code ec;
  fs::create_directories(out, ec);
  if (!path_is_dir(out)) throw_error(ErrorKind::Io, "cannot create the output folder ", out);

  QuantizeReport rep;
  std::vector<std::vector<std::pair<std::string, Tensor>>> shards(1);
  int64_t shard_bytes = 0;
  auto add = [&](std::vector<std::pair<std::string, Tensor>> entries) {
    int64_t n = 0;
    for (auto& kv : entries) n += (int64_t)kv.second.nbytes();
    if (shard_bytes > 0 && shard_bytes + n > max_shard_bytes) {  // one module's entries stay together
      shards.emplace_back();
      shard_bytes = 0;
    }
    shard_bytes += n;
    rep.bytes_out += n;
    for (auto& kv : entries) shards.back().push_back(std::move(kv));
  };
  for (const std::string& name : store.names()) {
    Tensor t = store.get(name);  // mapped
    rep.bytes_in += (int64_t)t.nbytes();
    const std::string module = name.size() > 7 ? name.substr(0, name.size() - 7) : name;
    if (!is_decoder_linear_weight(name) || skip_quantization(opts, module)) {
      add({{name, t}});
      rep.copied_tensors++;
      continue;
    }
    if (t.ndim() != 2 || (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16))
      throw_error(ErrorKind::Format, store.file_of(name), ": ", name, ": expected a 2-D float weight, got ",
                  t.describe());
    if (opts.load_in_4bit) {
      add(bnb_4bit_entries(quantize_4bit(t, opts.quant_type, opts.blocksize, opts.double_quant), name));
    } else {
      auto l = quantize_linear_8bit(t, opts.llm_int8_threshold);
      Tensor fmt = Tensor::zeros({}, DType::U8);  // weight_format: 0 = row-major
      add({{name, l->w.q}, {module + ".SCB", l->w.scale}, {module + ".weight_format", fmt}});
    }
    rep.quantized_tensors++;
  }
  if (rep.quantized_tensors == 0)
    throw_error(ErrorKind::Usage, in, ": no decoder Linear weight to quantize (all skipped or none found)");

  // Weights: one file, or shards with an index (transformers' names).
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  rep.shards = (int)shards.size();
  for (const char* stale : {"model.safetensors", "model.safetensors.index.json"})
    fs::remove(path_join(out, stale), ec);
  if (shards.size() == 1) {
    write_safetensors(path_join(out, "model.safetensors"), shards[0], meta);
  } else {
    nlohmann::json index;
    index["metadata"]["total_size"] = rep.bytes_out;
    for (size_t i = 0; i < shards.size(); i++) {
      char fname[64];
      std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      write_safetensors(path_join(out, fname), shards[i], meta);
      for (const auto& kv : shards[i]) index["weight_map"][kv.first] = fname;
    }
    write_text(path_join(out, "model.safetensors.index.json"), index.dump(2) + "\n");
  }

  // config.json with quantization_config (keys sorted, indent 2, as transformers writes it).
  LoadOptions written = opts;
  cfg["quantization_config"] = quantization_config_json(written);
  write_text(path_join(out, "config.json"), cfg.dump(2) + "\n");
  for (const char* f : kCopied)
    if (path_is_file(path_join(in, f))) {
      fs::copy_file(path_join(in, f), path_join(out, f), fs::copy_options::overwrite_existing, ec);
      if (ec) throw_error(ErrorKind::Io, "cannot copy ", f, " to ", out, ": ", ec.message());
    }
  return rep;
}

}  // namespace qtune
