// quantization_config in config.json and the per-Linear loading of quantized weights (see quant_load.h).
#include "model/quant_load.h"

#include "core/error.h"
#include "io/json_util.h"
#include "model/quant_linear.h"
#include "quant/bnb_format.h"
#include "tokenizer/regex.h"

namespace qtune {

namespace {

const char* kQuantStateNf4 = ".quant_state.bitsandbytes__nf4";
const char* kQuantStateFp4 = ".quant_state.bitsandbytes__fp4";

bool is_float(DType dt) {
  return dt == DType::F32 || dt == DType::BF16 || dt == DType::F16;
}

bool json_bool(const nlohmann::json& qc, const char* key, bool def, const std::string& ctx) {
  auto it = qc.find(key);
  if (it == qc.end() || it->is_null()) return def;
  if (!it->is_boolean())
    throw_error(ErrorKind::Config, ctx, ": quantization_config.", key, " must be a boolean, got ",
                json_type_name(*it));
  return it->get<bool>();
}

// The 4-bit entry names of weight W that exist in the store.
TensorMap entries_4bit(const WeightStore& store, const std::string& W) {
  TensorMap m;
  for (const char* suffix :
       {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", kQuantStateNf4, kQuantStateFp4})
    if (store.has(W + suffix)) m[W + suffix] = store.get(W + suffix);
  return m;
}

// The name of W's quant_state entry (W.quant_state.bitsandbytes__<type>, any type), or "" when it has none.
std::string quant_state_entry(const WeightStore& store, const std::string& W) {
  for (const char* s : {kQuantStateNf4, kQuantStateFp4})
    if (store.has(W + s)) return W + s;
  const std::string state_prefix = W + ".quant_state.bitsandbytes__";
  for (const std::string& n : store.names())
    if (n.compare(0, state_prefix.size(), state_prefix) == 0) return n;
  return "";
}

// True when W is stored as a bitsandbytes 4-bit weight: U8 packed bytes, or a quant_state entry beside it
// (a bnb_4bit_quant_storage other than uint8 stores the packed bytes as e.g. BF16).
bool stored_4bit(const WeightStore& store, const std::string& W, const TensorInfo& info) {
  return info.dtype == DType::U8 || !quant_state_entry(store, W).empty();
}

std::string scb_name(const WeightStore& store, const std::string& name) {
  if (store.has(name + ".SCB")) return name + ".SCB";
  if (store.has(name + ".weight.SCB")) return name + ".weight.SCB";  // older bitsandbytes
  return "";
}

}  // namespace

DType torch_dtype_from_name(const std::string& name, const std::string& context) {
  if (name == "float32") return DType::F32;
  if (name == "bfloat16") return DType::BF16;
  if (name == "float16") return DType::F16;
  throw_error(ErrorKind::Config, context, ": unknown dtype \"", name, "\" (float32, bfloat16, float16)");
}

const char* torch_dtype_name(DType dt) {
  return dt == DType::BF16 ? "bfloat16" : dt == DType::F16 ? "float16" : "float32";
}

LoadOptions read_quantization_config(const std::string& dir, bool* present) {
  const std::string path = path_is_dir(dir) ? path_join(dir, "config.json") : dir;
  nlohmann::json cfg = parse_json_text(read_text_file(path, ErrorKind::Config), path, ErrorKind::Config);
  LoadOptions o;
  *present = false;
  auto it = cfg.find("quantization_config");
  if (it == cfg.end() || it->is_null()) return o;
  const nlohmann::json& qc = *it;
  const std::string ctx = path;
  if (!qc.is_object())
    throw_error(ErrorKind::Config, ctx, ": quantization_config must be an object, got ", json_type_name(qc));
  *present = true;
  auto method = qc.find("quant_method");
  if (method != qc.end() && !(method->is_string() && method->get<std::string>() == "bitsandbytes"))
    throw_error(ErrorKind::Config, ctx, ": quantization_config.quant_method ", method->dump(),
                " is not supported (only \"bitsandbytes\")");
  o.load_in_4bit = json_bool(qc, "load_in_4bit", json_bool(qc, "_load_in_4bit", false, ctx), ctx);
  o.load_in_8bit = json_bool(qc, "load_in_8bit", json_bool(qc, "_load_in_8bit", false, ctx), ctx);
  if (o.load_in_4bit == o.load_in_8bit)
    throw_error(ErrorKind::Config, ctx,
                ": quantization_config must set exactly one of load_in_4bit and load_in_8bit");
  auto qt = qc.find("bnb_4bit_quant_type");
  if (o.load_in_4bit) {
    if (qt == qc.end() || !qt->is_string())
      throw_error(ErrorKind::Config, ctx,
                  ": quantization_config.bnb_4bit_quant_type is missing or not a string");
    o.quant_type =
        quant_type_from_name(qt->get<std::string>(), ctx + ": quantization_config.bnb_4bit_quant_type");
  }
  o.double_quant = json_bool(qc, "bnb_4bit_use_double_quant", false, ctx);
  auto cd = qc.find("bnb_4bit_compute_dtype");
  if (cd != qc.end() && !cd->is_null()) {
    if (!cd->is_string())
      throw_error(ErrorKind::Config, ctx, ": quantization_config.bnb_4bit_compute_dtype must be a string");
    o.compute_dtype =
        torch_dtype_from_name(cd->get<std::string>(), ctx + ": quantization_config.bnb_4bit_compute_dtype");
  }
  auto thr = qc.find("llm_int8_threshold");
  if (thr != qc.end() && !thr->is_null()) {
    if (!thr->is_number())
      throw_error(ErrorKind::Config, ctx, ": quantization_config.llm_int8_threshold must be a number");
    o.llm_int8_threshold = thr->get<float>();
  }
  auto skip = qc.find("llm_int8_skip_modules");
  if (skip != qc.end() && !skip->is_null()) {
    if (!skip->is_array())
      throw_error(ErrorKind::Config, ctx, ": quantization_config.llm_int8_skip_modules must be a list");
    o.skip_modules.emplace();
    for (const auto& s : *skip) {
      if (!s.is_string())
        throw_error(ErrorKind::Config, ctx, ": quantization_config.llm_int8_skip_modules holds a ",
                    json_type_name(s));
      o.skip_modules->push_back(s.get<std::string>());
    }
  }
  return o;
}

LoadOptions resolve_load_options(const std::string& dir, const LoadOptions& requested, bool* prequantized) {
  LoadOptions file = read_quantization_config(dir, prequantized);
  if (!*prequantized) return requested;
  if (requested.quantized()) {
    const bool same =
        requested.load_in_4bit == file.load_in_4bit && requested.load_in_8bit == file.load_in_8bit &&
        (!file.load_in_4bit ||
         (requested.quant_type == file.quant_type && requested.double_quant == file.double_quant));
    if (!same)
      throw_error(ErrorKind::Usage, dir, " is already quantized (",
                  file.load_in_4bit ? quant_type_name(file.quant_type) : "int8",
                  file.double_quant ? " + double quant" : "",
                  ", see its config.json); load it without quantization options");
    file.compute_dtype = requested.compute_dtype;  // the only run-time choice
  }
  return file;
}

nlohmann::json quantization_config_json(const LoadOptions& o) {
  nlohmann::json j;  // keys sorted, as transformers writes config.json
  j["_load_in_4bit"] = o.load_in_4bit;
  j["_load_in_8bit"] = o.load_in_8bit;
  j["bnb_4bit_compute_dtype"] = torch_dtype_name(o.compute_dtype);
  j["bnb_4bit_quant_storage"] = "uint8";
  j["bnb_4bit_quant_type"] = o.load_in_4bit ? quant_type_name(o.quant_type) : "fp4";
  j["bnb_4bit_use_double_quant"] = o.load_in_4bit && o.double_quant;
  j["llm_int8_enable_fp32_cpu_offload"] = false;
  j["llm_int8_has_fp16_weight"] = false;
  if (o.skip_modules)
    j["llm_int8_skip_modules"] = *o.skip_modules;
  else
    j["llm_int8_skip_modules"] = nullptr;  // transformers' default (the output embeddings)
  j["llm_int8_threshold"] = (double)o.llm_int8_threshold;
  j["load_in_4bit"] = o.load_in_4bit;
  j["load_in_8bit"] = o.load_in_8bit;
  j["quant_method"] = "bitsandbytes";
  return j;
}

bool skip_quantization(const LoadOptions& opts, const std::string& name) {
  for (const std::string& k : opts.skip_keys()) {
    if (name.size() >= k.size() && name.compare(name.size() - k.size(), std::string::npos, k) == 0)
      return true;
    // transformers' should_convert_module: the key as a regex matched from the start of the name, ending at a
    // module boundary ("layers.1" skips "layers.1.mlp.up_proj", not "layers.11.mlp.up_proj").
    const Regex re("^(?:" + k + ")(?:(?<=\\.)|(?=\\.|$))", "llm_int8_skip_modules entry \"" + k + "\"");
    std::vector<std::pair<size_t, size_t>> m;
    re.find_all(name, m);
    if (!m.empty()) return true;
  }
  return false;
}

std::string check_linear_entries(const WeightStore& store, const std::string& name, const Shape& shape,
                                 const LoadOptions& opts) {
  const std::string W = name + ".weight";
  const TensorInfo& info = store.info(W);
  const std::string where = store.file_of(W) + ": " + W;
  const std::string state = quant_state_entry(store, W);
  const bool q4 = info.dtype == DType::U8 || !state.empty();
  if (!q4 && is_float(info.dtype)) {
    if (info.shape != shape)
      return W + ": expected " + shape_str(shape) + ", got " + shape_str(info.shape) + " (" +
             dtype_name(info.dtype) + ")";
    return "";
  }
  if (q4) {
    if (state.empty())
      return where + ": " + dtype_name(info.dtype) + " packed 4-bit weight without its quant_state entry (" +
             W + kQuantStateNf4 + " or " + W + kQuantStateFp4 + ")";
    if (state != W + kQuantStateNf4 && state != W + kQuantStateFp4)  // a quant_state entry of another type
      return where + ": unknown 4-bit quant type in " + state + " (nf4 or fp4)";
    Quant4Tensor q;
    try {
      q = bnb_read_4bit(entries_4bit(store, W), W);
    } catch (const Error& e) {
      return store.file_of(W) + ": " + e.what();
    }
    if (q.shape != shape)
      return where + ": its quant_state shape is " + shape_str(q.shape) + " but the model expects " +
             shape_str(shape);
    if (!opts.load_in_4bit)
      return where + ": a bitsandbytes 4-bit weight, but config.json's quantization_config " +
             (opts.load_in_8bit ? "says load_in_8bit" : "is missing");
    if (q.quant_type != opts.quant_type || q.nested != opts.double_quant)
      return where + ": stored as " + quant_type_name(q.quant_type) + (q.nested ? " with" : " without") +
             " double quant, but config.json's quantization_config says " + quant_type_name(opts.quant_type) +
             (opts.double_quant ? " with" : " without") + " double quant";
    return "";
  }
  if (info.dtype == DType::I8) {
    if (info.shape != shape)
      return where + ": int8 weight " + shape_str(info.shape) + " but the model expects " + shape_str(shape);
    const std::string scb = scb_name(store, name);
    if (scb.empty()) return where + ": int8 weight without its row scales " + name + ".SCB";
    const TensorInfo& s = store.info(scb);
    if (s.dtype != DType::F32 || s.shape != Shape{shape[0]})
      return store.file_of(scb) + ": " + scb + ": expected F32 [" + std::to_string(shape[0]) + "], got " +
             dtype_name(s.dtype) + shape_str(s.shape);
    if (store.has(name + ".weight_format")) {
      Tensor f = store.get(name + ".weight_format");
      if (f.dtype() != DType::U8 || f.numel() != 1 || f.data<uint8_t>()[0] != 0)
        return store.file_of(W) + ": " + name +
               ".weight_format: only the row-major format (U8 scalar 0) is supported";
    }
    if (!opts.load_in_8bit)
      return where + ": an LLM.int8 weight, but config.json's quantization_config " +
             (opts.load_in_4bit ? "says load_in_4bit" : "is missing");
    return "";
  }
  return where + ": dtype " + dtype_name(info.dtype) +
         " is neither a float type nor a bitsandbytes U8 / I8 weight";
}

bool load_quantized_linear(Linear& lin, const WeightStore& store, const LoadOptions& opts, Device device,
                           std::vector<std::string>* used) {
  const std::string W = lin.name + ".weight";
  const TensorInfo& info = store.info(W);
  const bool q4 = stored_4bit(store, W, info);
  if (!q4 && is_float(info.dtype) && (!opts.quantized() || skip_quantization(opts, lin.name))) return false;
  // On CUDA: stored entries are read (mapped) and copied up; a float weight goes up alone in its file dtype
  // and is quantized there, so host memory holds no more than the mapped files.
  if (q4) {
    TensorMap m = entries_4bit(store, W);
    lin.q4 = make_quant4_linear(bnb_read_4bit(m, W), opts.compute_dtype);
    if (device != Device::CPU) lin.q4 = quant4_linear_to(*lin.q4, device);
    for (const auto& kv : m) used->push_back(kv.first);
  } else if (info.dtype == DType::I8) {
    auto l = std::make_shared<Int8Linear>();
    const std::string scb = scb_name(store, lin.name);
    l->w.q = store.get(W);
    l->w.scale = store.get(scb);
    l->threshold = opts.llm_int8_threshold;
    lin.q8 = device == Device::CPU ? l : int8_linear_to(*l, device);
    used->push_back(W);
    used->push_back(scb);
    if (store.has(lin.name + ".weight_format")) used->push_back(lin.name + ".weight_format");
  } else {
    Tensor w = store.get(W);  // [O, I], mapped: quantized straight from the file (or from its GPU copy)
    if (device != Device::CPU) w = w.to(device);
    if (opts.load_in_4bit)
      lin.q4 =
          quantize_linear_4bit(w, opts.quant_type, opts.blocksize, opts.double_quant, opts.compute_dtype);
    else
      lin.q8 = quantize_linear_8bit(w, opts.llm_int8_threshold);
    used->push_back(W);
  }
  lin.weight = Tensor();
  return true;
}

}  // namespace qtune
