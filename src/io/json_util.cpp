// Whole-file reads, JSON parsing with located errors, UTF-8 validation and path helpers for src/io.
#include "io/json_util.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace qtune {

namespace fs = std::filesystem;

std::string read_text_file(const std::string& path, ErrorKind kind) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw_error(kind, path, ": is a folder, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error(kind, path, ": cannot open: ", std::strerror(errno));
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) throw_error(kind, path, ": read error");
  return os.str();
}

nlohmann::json parse_json_text(const std::string& text, const std::string& source, ErrorKind kind) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw_error(kind, source, ": malformed JSON: ", e.what());
  }
}

nlohmann::json read_json_object_file(const std::string& path) {
  nlohmann::json j = parse_json_text(read_text_file(path, ErrorKind::Io), path, ErrorKind::Format);
  if (!j.is_object())
    throw_error(ErrorKind::Format, path, ": expected a JSON object, got ", json_type_name(j));
  return j;
}

const nlohmann::json* json_field(const nlohmann::json& j, const char* k) {
  auto it = j.find(k);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::string json_peft_type(const nlohmann::json& j, const std::string& path) {
  const nlohmann::json* pt = j.is_object() ? json_field(j, "peft_type") : nullptr;
  if (!pt || !pt->is_string())
    throw_error(ErrorKind::Format, path, ": no 'peft_type' (not a PEFT adapter_config.json?)");
  return pt->get<std::string>();
}

std::string json_type_name(const nlohmann::json& v) {
  if (v.is_boolean()) return "boolean";
  if (v.is_number_float()) return "number (" + v.dump() + ")";
  if (v.is_number()) return "integer (" + v.dump() + ")";
  return v.type_name();  // "null", "object", "array", "string", ...
}

bool is_valid_utf8(const char* s, size_t n, size_t* bad_offset) {
  const unsigned char* p = (const unsigned char*)s;
  size_t i = 0;
  while (i < n) {
    unsigned c = p[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07;
    } else {
      *bad_offset = i;
      return false;
    }
    if (i + len > n) {
      *bad_offset = i;
      return false;
    }
    for (size_t k = 1; k < len; k++) {
      if ((p[i + k] & 0xc0) != 0x80) {
        *bad_offset = i;
        return false;
      }
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    bool overlong = (len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    if (overlong || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
      *bad_offset = i;
      return false;
    }
    i += len;
  }
  return true;
}

bool path_is_dir(const std::string& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

bool path_is_file(const std::string& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

std::string path_join(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / fs::path(name)).string();
}

std::string path_parent(const std::string& p) {
  std::string d = fs::path(p).parent_path().string();
  return d.empty() ? "." : d;
}

}  // namespace qtune
