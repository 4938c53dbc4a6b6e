// Small helpers shared by the io readers: whole-file reads and JSON parsing whose failures become
// qtune::Error messages naming the file and the place (line/column or byte) where the parser stopped.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"

namespace qtune {

// Reads a whole file; a missing/unreadable file throws `kind` naming the path and the OS reason.
std::string read_text_file(const std::string& path, ErrorKind kind);

// Parses JSON text. Malformed text throws `kind`: "<source>: malformed JSON: <parser message>" (the
// parser message carries line and column).
nlohmann::json parse_json_text(const std::string& text, const std::string& source, ErrorKind kind);

// A JSON file that must hold an object (a config): unreadable → Io, malformed or not an object → Format,
// naming the path.
nlohmann::json read_json_object_file(const std::string& path);
// The member k of object j, or nullptr when it is absent or null.
const nlohmann::json* json_field(const nlohmann::json& j, const char* k);
// The "peft_type" string of an adapter_config.json object j read from path; ErrorKind::Format naming path
// when j is not an object or has no string peft_type.
std::string json_peft_type(const nlohmann::json& j, const std::string& path);

// The JSON type of a value in words ("string", "array", "number", ...), for "expected X, got Y" errors.
std::string json_type_name(const nlohmann::json& v);

// True when the bytes are well-formed UTF-8; otherwise *bad_offset is the first bad byte.
bool is_valid_utf8(const char* s, size_t n, size_t* bad_offset);

// Filesystem conveniences (std::filesystem without exceptions).
bool path_is_dir(const std::string& p);
bool path_is_file(const std::string& p);
std::string path_join(const std::string& dir, const std::string& name);
std::string path_parent(const std::string& p);  // "" → "."

}  // namespace qtune
