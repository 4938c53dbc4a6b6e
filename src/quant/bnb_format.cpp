// Reading and writing the transformers/bitsandbytes entry set of a 4-bit weight (see bnb_format.h).
#include "quant/bnb_format.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "quant/double_quant.h"

namespace qtune {

namespace {

const char* kStateKey = ".quant_state.bitsandbytes__";

// torch dtype names as bitsandbytes writes them (str(torch.bfloat16) without "torch.").
const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "float32";
    case DType::BF16:
      return "bfloat16";
    case DType::F16:
      return "float16";
    default:
      throw_error(ErrorKind::Usage, "bnb format: unsupported original dtype ", dtype_name(t));
  }
}

bool dtype_from_torch_name(const std::string& s, DType* out) {
  if (s == "float32")
    *out = DType::F32;
  else if (s == "bfloat16")
    *out = DType::BF16;
  else if (s == "float16")
    *out = DType::F16;
  else
    return false;
  return true;
}

Tensor code_tensor(const float* v, int64_t n) {
  return Tensor::from_f32(std::vector<float>(v, v + n), {n});
}

}  // namespace

std::string python_float_repr(double v) {
  if (!std::isfinite(v)) throw_error(ErrorKind::Usage, "python_float_repr: non-finite value ", v);
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), std::fabs(v), std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // "d.ddde-XX" with the shortest round-trip digits
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, 1) + (e > 2 ? sci.substr(2, e - 2) : "");
  const int exp10 = std::stoi(sci.substr(e + 1));
  std::string out = v < 0 ? "-" : "";
  const int decpt = exp10 + 1, nd = (int)digits.size();
  if (decpt <= -4 || decpt > 16) {
    out += digits.substr(0, 1);
    if (nd > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof(eb), "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    return out + eb;
  }
  if (decpt <= 0) return out + "0." + std::string((size_t)-decpt, '0') + digits;
  if (decpt < nd) return out + digits.substr(0, (size_t)decpt) + "." + digits.substr((size_t)decpt);
  return out + digits + std::string((size_t)(decpt - nd), '0') + ".0";
}

std::string bnb_quant_state_json(const Quant4Tensor& q) {
  std::string s = "{\"quant_type\": \"" + std::string(quant_type_name(q.quant_type)) +
                  "\", \"blocksize\": " + std::to_string(q.blocksize) + ", \"dtype\": \"" +
                  torch_dtype_name(q.dtype) + "\", \"shape\": [";
  for (size_t i = 0; i < q.shape.size(); i++) s += (i ? ", " : "") + std::to_string(q.shape[i]);
  s += "]";
  if (q.nested)
    s += ", \"nested_blocksize\": " + std::to_string(q.nested_blocksize) +
         ", \"nested_dtype\": \"float32\", \"nested_offset\": " + python_float_repr((double)q.offset);
  return s + "}";
}

std::vector<std::pair<std::string, Tensor>> bnb_4bit_entries(const Quant4Tensor& q,
                                                             const std::string& prefix) {
  validate_quant4(q, prefix);
  std::vector<std::pair<std::string, Tensor>> out;
  out.emplace_back(prefix, q.packed);
  out.emplace_back(prefix + ".absmax", q.absmax);
  out.emplace_back(prefix + ".quant_map", code_tensor(code4(q.quant_type), 16));
  if (q.nested) {
    out.emplace_back(prefix + ".nested_absmax", q.nested_absmax);
    out.emplace_back(prefix + ".nested_quant_map", q.nested_code.clone());
  }
  const std::string js = bnb_quant_state_json(q);
  Tensor blob = Tensor::empty({(int64_t)js.size()}, DType::U8);
  std::memcpy(blob.raw(), js.data(), js.size());
  out.emplace_back(prefix + kStateKey + quant_type_name(q.quant_type), blob);
  return out;
}

void bnb_write_4bit(const Quant4Tensor& q, const std::string& prefix, TensorMap* out) {
  for (auto& kv : bnb_4bit_entries(q, prefix)) (*out)[kv.first] = kv.second;
}

bool bnb_has_4bit(const TensorMap& tensors, const std::string& prefix) {
  return tensors.count(prefix + kStateKey + "nf4") || tensors.count(prefix + kStateKey + "fp4");
}

Quant4Tensor bnb_read_4bit(const TensorMap& tensors, const std::string& prefix) {
  auto need = [&](const std::string& name) -> const Tensor& {
    auto it = tensors.find(name);
    if (it == tensors.end())
      throw_error(ErrorKind::Format, "bitsandbytes 4-bit weight '", prefix, "': missing ", name);
    if (it->second.is_cuda()) throw_error(ErrorKind::Usage, name, ": expected a CPU tensor");
    return it->second;
  };
  // Which quant_state entry: exactly one of __nf4 / __fp4; any other __suffix is an unknown type.
  std::string state_name;
  for (auto it = tensors.lower_bound(prefix + kStateKey); it != tensors.end(); ++it) {
    if (it->first.compare(0, prefix.size() + std::strlen(kStateKey), prefix + kStateKey) != 0) break;
    const std::string suffix = it->first.substr(prefix.size() + std::strlen(kStateKey));
    quant_type_from_name(suffix, it->first);  // throws on an unknown type
    if (!state_name.empty())
      throw_error(ErrorKind::Format, "bitsandbytes 4-bit weight '", prefix, "': both ", state_name, " and ",
                  it->first);
    state_name = it->first;
  }
  if (state_name.empty())
    throw_error(ErrorKind::Format, "bitsandbytes 4-bit weight '", prefix, "': missing ", prefix, kStateKey,
                "nf4 (or __fp4)");
  const Tensor& blob = need(state_name);
  if (blob.dtype() != DType::U8)
    throw_error(ErrorKind::Format, state_name, ": expected U8 JSON bytes, got ", blob.describe());
  const std::string text(static_cast<const char*>(blob.raw()), (size_t)blob.numel());
  nlohmann::json js;
  try {
    js = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw_error(ErrorKind::Format, state_name, ": malformed JSON (", e.what(), ")");
  }
  if (!js.is_object()) throw_error(ErrorKind::Format, state_name, ": expected a JSON object");
  auto field = [&](const char* key) -> const nlohmann::json& {
    if (!js.contains(key)) throw_error(ErrorKind::Format, state_name, ": missing \"", key, "\"");
    return js[key];
  };
  Quant4Tensor q;
  const auto& qt = field("quant_type");
  if (!qt.is_string()) throw_error(ErrorKind::Format, state_name, ": \"quant_type\" is not a string");
  q.quant_type = quant_type_from_name(qt.get<std::string>(), state_name);
  if (state_name.substr(state_name.size() - 3) != quant_type_name(q.quant_type))
    throw_error(ErrorKind::Format, state_name, ": quant_type \"", qt.get<std::string>(),
                "\" does not match the entry name");
  const auto& bs = field("blocksize");
  if (!bs.is_number_integer())
    throw_error(ErrorKind::Format, state_name, ": \"blocksize\" is not an integer");
  q.blocksize = bs.get<int64_t>();
  const auto& dt = field("dtype");
  if (!dt.is_string() || !dtype_from_torch_name(dt.get<std::string>(), &q.dtype))
    throw_error(ErrorKind::Format, state_name, ": unsupported \"dtype\" ", dt.dump(),
                " (float32, bfloat16, float16)");
  const auto& shape = field("shape");
  if (!shape.is_array()) throw_error(ErrorKind::Format, state_name, ": \"shape\" is not a list");
  for (const auto& d : shape) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      throw_error(ErrorKind::Format, state_name, ": bad dimension ", d.dump(), " in \"shape\"");
    q.shape.push_back(d.get<int64_t>());
  }
  q.packed = need(prefix);
  if (q.packed.dtype() != DType::U8) {
    // bnb_4bit_quant_storage (e.g. bfloat16 for FSDP) stores the same packed bytes as another dtype,
    // [bytes / itemsize, 1]; the bytes are what count.
    const int64_t want = (shape_numel(q.shape) + 1) / 2;
    if ((int64_t)q.packed.nbytes() != want)
      throw_error(ErrorKind::Format, "bitsandbytes 4-bit weight '", prefix, "': packed data is ",
                  q.packed.describe(), " (", q.packed.nbytes(), " bytes in bnb_4bit_quant_storage ",
                  dtype_name(q.packed.dtype()), "), expected ", want, " bytes for shape ",
                  shape_str(q.shape));
    auto owner = std::make_shared<Tensor>(q.packed);
    q.packed = Tensor::borrow(owner->raw(), {(int64_t)owner->nbytes(), 1}, DType::U8, owner->device(), owner);
  }
  q.absmax = need(prefix + ".absmax");
  const Tensor& qmap = need(prefix + ".quant_map");
  if (qmap.dtype() != DType::F32 || qmap.numel() != 16 ||
      std::memcmp(qmap.raw(), code4(q.quant_type), 16 * sizeof(float)) != 0)
    throw_error(ErrorKind::Format, prefix, ".quant_map: ", qmap.describe(), " is not the ",
                quant_type_name(q.quant_type), " code book");
  q.nested = tensors.count(prefix + ".nested_absmax") > 0 || js.contains("nested_offset");
  if (q.nested) {
    q.nested_absmax = need(prefix + ".nested_absmax");
    q.nested_code = need(prefix + ".nested_quant_map");
    const auto& nbs = field("nested_blocksize");
    if (!nbs.is_number_integer())
      throw_error(ErrorKind::Format, state_name, ": \"nested_blocksize\" is not an integer");
    q.nested_blocksize = nbs.get<int64_t>();
    const auto& ndt = field("nested_dtype");
    if (!ndt.is_string() || ndt.get<std::string>() != "float32")
      throw_error(ErrorKind::Format, state_name, ": unsupported \"nested_dtype\" ", ndt.dump());
    const auto& off = field("nested_offset");
    if (!off.is_number()) throw_error(ErrorKind::Format, state_name, ": \"nested_offset\" is not a number");
    q.offset = (float)off.get<double>();
  }
  validate_quant4(q, "bitsandbytes 4-bit weight '" + prefix + "'");
  return q;
}

}  // namespace qtune
