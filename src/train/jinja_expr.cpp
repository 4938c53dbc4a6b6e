// Jinja template chunking and expression lexer (see jinja_expr.h).
#include "train/jinja_expr.h"

#include <cctype>

#include "core/error.h"

namespace qtune::jinja {

void fail(const std::string& ctx, const std::string& msg) {
  throw_error(ErrorKind::Config, ctx.empty() ? "" : ctx + ": ", "chat_template: ", msg);
}

std::vector<Token> lex(const std::string& s, const std::string& ctx) {
  std::vector<Token> out;
  size_t i = 0;
  while (i < s.size()) {
    char c = s[i];
    if (std::isspace((unsigned char)c)) {
      ++i;
      continue;
    }
    if (std::isalpha((unsigned char)c) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum((unsigned char)s[j]) || s[j] == '_')) ++j;
      out.push_back({Tk::Name, s.substr(i, j - i)});
      i = j;
    } else if (std::isdigit((unsigned char)c)) {
      size_t j = i;
      bool is_float = false;
      while (j < s.size() &&
             (std::isdigit((unsigned char)s[j]) ||
              (s[j] == '.' && !is_float && j + 1 < s.size() && std::isdigit((unsigned char)s[j + 1])))) {
        if (s[j] == '.') is_float = true;
        ++j;
      }
      out.push_back({is_float ? Tk::Float : Tk::Int, s.substr(i, j - i), std::stod(s.substr(i, j - i))});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          char e = s[++j];
          v += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        } else {
          v += s[j];
        }
      }
      if (j >= s.size()) fail(ctx, "unterminated string in '" + s + "'");
      out.push_back({Tk::Str, v});
      i = j + 1;
    } else {
      static const char* two[] = {"==", "!=", "<=", ">=", "//", "**"};
      std::string op(1, c);
      for (const char* t : two)
        if (s.compare(i, 2, t) == 0) op = t;
      if (std::string("()[]{}.,:|+-*/%~<>=!").find(c) == std::string::npos)
        fail(ctx, std::string("unexpected character '") + c + "' in '" + s + "'");
      out.push_back({Tk::Op, op});
      i += op.size();
    }
  }
  out.push_back({Tk::End, ""});
  return out;
}

// ---- chunks ----
std::vector<Chunk> split_chunks(const std::string& t, const std::string& ctx) {
  std::vector<Chunk> out;
  size_t pos = 0;
  bool strip_next = false, trim_newline = false;
  while (pos <= t.size()) {
    size_t open = t.find('{', pos);
    while (open != std::string::npos && open + 1 < t.size() && t[open + 1] != '{' && t[open + 1] != '%' &&
           t[open + 1] != '#')
      open = t.find('{', open + 1);
    if (open != std::string::npos && open + 1 >= t.size()) open = std::string::npos;
    std::string text = t.substr(pos, open == std::string::npos ? std::string::npos : open - pos);
    if (trim_newline) {
      if (text.compare(0, 2, "\r\n") == 0)
        text.erase(0, 2);
      else if (!text.empty() && text[0] == '\n')
        text.erase(0, 1);
    }
    if (strip_next) text.erase(0, std::min(text.size(), text.find_first_not_of(" \t\r\n")));
    if (open == std::string::npos) {
      if (!text.empty()) out.push_back({ChunkKind::Text, text});
      break;
    }
    const char kind = t[open + 1];
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t body = open + 2;
    const bool minus_left = body < t.size() && t[body] == '-';
    const bool plus_left = body < t.size() && t[body] == '+';
    if (minus_left || plus_left) ++body;
    if (minus_left) {
      text.erase(
          text.find_last_not_of(" \t\r\n") == std::string::npos ? 0 : text.find_last_not_of(" \t\r\n") + 1);
    } else if (kind != '{' && !plus_left) {  // lstrip_blocks: blanks between a newline and the tag
      size_t k = open;  // the raw source before the tag: blanks back to a newline or the start
      while (k > 0 && (t[k - 1] == ' ' || t[k - 1] == '\t')) --k;
      const size_t blanks = open - k;
      if ((k == 0 || t[k - 1] == '\n') && blanks <= text.size()) text.erase(text.size() - blanks);
    }
    if (!text.empty()) out.push_back({ChunkKind::Text, text});
    size_t end = t.find(close, body);
    if (end == std::string::npos) fail(ctx, "unclosed '{" + std::string(1, kind) + "' tag");
    size_t inner_end = end;
    strip_next = inner_end > body && t[inner_end - 1] == '-';
    if (strip_next) --inner_end;
    std::string inner = t.substr(body, inner_end - body);
    if (kind == '{')
      out.push_back({ChunkKind::Expr, inner});
    else if (kind == '%')
      out.push_back({ChunkKind::Stmt, inner});
    trim_newline = kind != '{';  // trim_blocks
    pos = end + 2;
  }
  return out;
}

}  // namespace qtune::jinja
