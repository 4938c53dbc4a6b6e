// Jinja expression lexer (see jinja_expr.h).
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

}  // namespace qtune::jinja
