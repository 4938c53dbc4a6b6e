// Writing a bitsandbytes-layout quantized model folder (see quantize_folder.h).
#include "model/quantize_folder.h"

#include <filesystem>
#include <regex>

#include "core/allocator.h"
#include "core/error.h"
#include "io/hf_config.h"
#include "io/json_util.h"
#include "io/model_folder.h"
#include "io/safetensors.h"
#include "model/quant_linear.h"
#include "model/quant_load.h"
#include "quant/bnb_format.h"

namespace qtune {

namespace fs = std::filesystem;

namespace {

// The weights of the Linear modules transformers replaces with bitsandbytes layers: the decoder layers'
// projections, and lm_head unless it is tied to the embeddings (transformers keeps a tied head dense).
bool is_linear_weight(const std::string& name, bool tied_head) {
  static const std::regex re(
      R"(model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight)");
  return std::regex_match(name, re) || (name == "lm_head.weight" && !tied_head);
}

}  // namespace

QuantizeReport quantize_model_folder(const std::string& in, const std::string& out, const LoadOptions& opts,
                                     Device device, int64_t max_shard_bytes) {
  if (opts.load_in_4bit == opts.load_in_8bit)
    throw_error(ErrorKind::Usage, "quantize: choose exactly one of 4-bit and 8-bit");
  if (device == Device::CUDA && !cuda_available())
    throw_error(ErrorKind::Unsupported, "quantize --device cuda: no usable GPU (run `qtune env` for details)");
  bool prequantized = false;
  read_quantization_config(in, &prequantized);
  if (prequantized)
    throw_error(ErrorKind::Usage, in, ": already quantized (config.json has a quantization_config)");
  const std::string cfg_path = path_join(in, "config.json");
  nlohmann::json cfg =
      parse_json_text(read_text_file(cfg_path, ErrorKind::Config), cfg_path, ErrorKind::Config);
  const bool tied_head = load_model_config(in).tie_word_embeddings;
  WeightStore store = WeightStore::open(in);
  if (fs::exists(out) && fs::equivalent(fs::path(in), fs::path(out)))
    throw_error(ErrorKind::Usage, "quantize: --out must differ from --model (", in, ")");
  std::error_code ec;
  fs::create_directories(out, ec);
  if (!path_is_dir(out)) throw_error(ErrorKind::Io, "cannot create the output folder ", out);

  QuantizeReport rep;
  std::vector<ShardTensors> groups;  // one module's entries stay together
  std::vector<int64_t> group_bytes;
  auto add = [&](ShardTensors entries) {
    int64_t n = 0;
    for (auto& kv : entries) n += (int64_t)kv.second.nbytes();
    rep.bytes_out += n;
    groups.push_back(std::move(entries));
    group_bytes.push_back(n);
  };
  for (const std::string& name : store.names()) {
    Tensor t = store.get(name);  // mapped
    rep.bytes_in += (int64_t)t.nbytes();
    const std::string module = name.size() > 7 ? name.substr(0, name.size() - 7) : name;
    if (!is_linear_weight(name, tied_head) || skip_quantization(opts, module)) {
      add({{name, t}});
      rep.copied_tensors++;
      continue;
    }
    if (t.ndim() != 2 || (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16))
      throw_error(ErrorKind::Format, store.file_of(name), ": ", name, ": expected a 2-D float weight, got ",
                  t.describe());
    // On the GPU the weight goes up alone and its quantized entries come back (the Linear layers'
    // quantizers, which follow bitsandbytes' CUDA kernels there).
    const Tensor w = device == Device::CUDA ? t.to(Device::CUDA) : t;
    if (opts.load_in_4bit) {
      auto l = quantize_linear_4bit(w, opts.quant_type, opts.blocksize, opts.double_quant, opts.compute_dtype);
      add(bnb_4bit_entries(quant4_linear_to(*l, Device::CPU)->q, name));
    } else {
      auto l = int8_linear_to(*quantize_linear_8bit(w, opts.llm_int8_threshold), Device::CPU);
      Tensor fmt = Tensor::zeros({}, DType::U8);  // weight_format: 0 = row-major
      add({{name, l->w.q}, {module + ".SCB", l->w.scale}, {module + ".weight_format", fmt}});
    }
    rep.quantized_tensors++;
  }
  if (rep.quantized_tensors == 0)
    throw_error(ErrorKind::Usage, in, ": no Linear weight to quantize (all skipped or none found)");

  // Weights: one file, or shards with an index (transformers' names).
  const std::vector<std::vector<size_t>> shards = plan_shards(group_bytes, max_shard_bytes);
  rep.shards = (int)shards.size();
  write_weight_shards(out, rep.shards, [&](int i) {
    ShardTensors t;
    for (size_t g : shards[(size_t)i])
      for (auto& kv : groups[g]) t.push_back(kv);
    return t;
  });

  // config.json with quantization_config (keys sorted, indent 2, as transformers writes it).
  LoadOptions written = opts;
  cfg["quantization_config"] = quantization_config_json(written);
  write_text_file(path_join(out, "config.json"), cfg.dump(2) + "\n");
  copy_model_side_files(in, out);
  return rep;
}

}  // namespace qtune
