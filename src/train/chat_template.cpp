// Chat-template rendering (see chat_template.h): the template is cut into text / {{ }} / {% %} chunks
// (whitespace control, trim_blocks, lstrip_blocks), statements are parsed into a tree of Nodes over the
// expression trees of jinja_expr.h, and the tree is executed over JSON values.
#include "train/chat_template.h"

#include <cmath>
#include <map>
#include <sstream>

#include "core/error.h"
#include "train/jinja_expr.h"

namespace qtune {
namespace {

using nlohmann::json;
using namespace jinja;

// ---- statements ----
enum class Nk { Text, Output, If, For, Set, Break, Continue };
struct Node {
  Nk kind;
  std::string text;                                           // Text
  ExprP e;                                                    // Output, Set value, For iterable
  std::vector<std::pair<ExprP, std::vector<Node>>> branches;  // If (else: null condition); For: body
  std::vector<std::string> vars;                              // For targets; Set: name [, attr]
};

class StmtParser {
 public:
  StmtParser(const std::vector<Chunk>& c, const std::string& ctx) : c_(c), ctx_(ctx) {}
  // Parses until a statement whose first word is in `stops` (returned in *stop, its parser in *rest).
  std::vector<Node> block(const std::vector<std::string>& stops, std::string* stop,
                          std::unique_ptr<Parser>* rest) {
    std::vector<Node> out;
    while (i_ < c_.size()) {
      const Chunk& ch = c_[i_++];
      if (ch.kind == ChunkKind::Text) {
        out.push_back({Nk::Text, ch.src, nullptr, {}, {}});
        continue;
      }
      auto p = std::make_unique<Parser>(ch.src, ctx_);
      if (ch.kind == ChunkKind::Expr) {
        Node n{Nk::Output, "", p->expr(), {}, {}};
        p->expect_end();
        out.push_back(n);
        continue;
      }
      const std::string kw = p->name();
      for (const std::string& s : stops)
        if (kw == s) {
          *stop = kw;
          *rest = std::move(p);
          return out;
        }
      if (kw == "if") {
        out.push_back(parse_if(*p));
      } else if (kw == "for") {
        Node n{Nk::For, "", nullptr, {}, {}};
        n.vars.push_back(p->name());
        while (p->is_op(",")) {
          p->next();
          n.vars.push_back(p->name());
        }
        if (!p->is_name("in")) fail(ctx_, "expected 'in' in '{% " + ch.src + " %}'");
        p->next();
        n.e = p->expr();
        p->expect_end();
        std::string s;
        std::unique_ptr<Parser> r;
        n.branches.push_back({nullptr, block({"endfor"}, &s, &r)});
        if (s.empty()) fail(ctx_, "'for' without 'endfor'");
        out.push_back(std::move(n));
      } else if (kw == "set") {
        Node n{Nk::Set, "", nullptr, {}, {}};
        n.vars.push_back(p->name());
        if (p->is_op(".")) {
          p->next();
          n.vars.push_back(p->name());
        }
        p->expect_op("=");
        n.e = p->expr();
        p->expect_end();
        out.push_back(std::move(n));
      } else if (kw == "break" || kw == "continue") {
        out.push_back({kw == "break" ? Nk::Break : Nk::Continue, "", nullptr, {}, {}});
      } else if (kw == "generation" || kw == "endgeneration") {
        // TRL's assistant-mask markers: no output of their own
      } else {
        fail(ctx_, "unsupported statement '{% " + ch.src + " %}'");
      }
    }
    return out;
  }

 private:
  Node parse_if(Parser& p) {
    Node n{Nk::If, "", nullptr, {}, {}};
    ExprP cond = p.expr();
    p.expect_end();
    for (;;) {
      std::string s;
      std::unique_ptr<Parser> r;
      std::vector<Node> body = block({"elif", "else", "endif"}, &s, &r);
      n.branches.push_back({cond, std::move(body)});
      if (s.empty()) fail(ctx_, "'if' without 'endif'");
      if (s == "endif") return n;
      if (s == "else") {
        std::string s2;
        std::unique_ptr<Parser> r2;
        n.branches.push_back({nullptr, block({"endif"}, &s2, &r2)});
        if (s2.empty()) fail(ctx_, "'else' without 'endif'");
        return n;
      }
      cond = r->expr();  // elif
      r->expect_end();
    }
  }
  const std::vector<Chunk>& c_;
  size_t i_ = 0;
  std::string ctx_;
};

// ---- values ----
struct V {
  json j;
  bool undef = false;
};
V undef() {
  return V{nullptr, true};
}

std::string py_repr(const json& j);
std::string to_text(const V& v) {
  if (v.undef) return "";
  if (v.j.is_string()) return v.j.get<std::string>();
  return py_repr(v.j);
}
std::string py_repr(const json& j) {
  if (j.is_null()) return "None";
  if (j.is_boolean()) return j.get<bool>() ? "True" : "False";
  if (j.is_number_integer()) return std::to_string(j.get<int64_t>());
  if (j.is_number()) {
    double d = j.get<double>();
    if (d == std::floor(d) && std::fabs(d) < 1e16) return std::to_string((int64_t)d) + ".0";
    std::ostringstream os;
    os.precision(17);
    os << d;
    return os.str();
  }
  if (j.is_string()) return "'" + j.get<std::string>() + "'";
  std::string s = j.is_array() ? "[" : "{";
  bool first = true;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!first) s += ", ";
    first = false;
    if (j.is_object()) s += "'" + it.key() + "': ";
    s += py_repr(*it);
  }
  return s + (j.is_array() ? "]" : "}");
}
// Python's json.dumps(ensure_ascii=False) separators.
std::string to_json(const json& j) {
  if (j.is_array() || j.is_object()) {
    std::string s = j.is_array() ? "[" : "{";
    bool first = true;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!first) s += ", ";
      first = false;
      if (j.is_object()) s += json(it.key()).dump() + ": ";
      s += to_json(*it);
    }
    return s + (j.is_array() ? "]" : "}");
  }
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}
bool truthy(const V& v) {
  if (v.undef || v.j.is_null()) return false;
  if (v.j.is_boolean()) return v.j.get<bool>();
  if (v.j.is_number()) return v.j.get<double>() != 0;
  if (v.j.is_string() || v.j.is_array() || v.j.is_object()) return !v.j.empty();
  return true;
}
std::string strip(const std::string& s, const std::string& chars, bool left, bool right) {
  size_t b = left ? s.find_first_not_of(chars) : 0;
  if (b == std::string::npos) return "";
  size_t e = right ? s.find_last_not_of(chars) : s.size() - 1;
  return s.substr(b, e - b + 1);
}
const char* kBlank = " \t\n\r\f\v";

enum class Flow { Normal, Break, Continue };

class Exec {
 public:
  Exec(const json& ctx, const std::string& where) : where_(where) { scopes_.push_back(ctx); }
  std::string out;

  Flow run(const std::vector<Node>& nodes) {
    for (const Node& n : nodes) {
      switch (n.kind) {
        case Nk::Text:
          out += n.text;
          break;
        case Nk::Output:
          out += to_text(eval(*n.e));
          break;
        case Nk::Break:
          return Flow::Break;
        case Nk::Continue:
          return Flow::Continue;
        case Nk::Set: {
          V v = eval(*n.e);
          if (n.vars.size() == 1) {
            scopes_.back()[n.vars[0]] = v.j;
          } else {
            json* ns = lookup(n.vars[0]);
            if (!ns || !ns->is_object())
              fail(where_, "'set " + n.vars[0] + "." + n.vars[1] + "' needs a namespace");
            (*ns)[n.vars[1]] = v.j;
          }
          break;
        }
        case Nk::If:
          for (const auto& [cond, body] : n.branches)
            if (!cond || truthy(eval(*cond))) {
              Flow f = run(body);
              if (f != Flow::Normal) return f;
              break;
            }
          break;
        case Nk::For: {
          V it = eval(*n.e);
          std::vector<json> items;
          if (it.j.is_array())
            items.assign(it.j.begin(), it.j.end());
          else if (it.j.is_object())
            for (auto k = it.j.begin(); k != it.j.end(); ++k) items.push_back(k.key());
          else if (it.j.is_string())
            for (char c : it.j.get<std::string>()) items.push_back(std::string(1, c));
          else if (!it.undef && !it.j.is_null())
            fail(where_, "cannot iterate over " + py_repr(it.j));
          const int64_t len = (int64_t)items.size();
          for (int64_t i = 0; i < len; ++i) {
            json scope = json::object();
            if (n.vars.size() == 1) {
              scope[n.vars[0]] = items[i];
            } else {
              if (!items[i].is_array() || items[i].size() != n.vars.size())
                fail(where_, "cannot unpack " + py_repr(items[i]) + " into " + std::to_string(n.vars.size()) +
                                 " names");
              for (size_t k = 0; k < n.vars.size(); ++k) scope[n.vars[k]] = items[i][k];
            }
            scope["loop"] = {
                {"index0", i},   {"index", i + 1},      {"first", i == 0},         {"last", i == len - 1},
                {"length", len}, {"revindex", len - i}, {"revindex0", len - 1 - i}};
            scopes_.push_back(std::move(scope));
            Flow f = run(n.branches[0].second);
            scopes_.pop_back();
            if (f == Flow::Break) break;
          }
          break;
        }
      }
    }
    return Flow::Normal;
  }

 private:
  json* lookup(const std::string& name) {
    for (size_t k = scopes_.size(); k-- > 0;) {
      auto it = scopes_[k].find(name);
      if (it != scopes_[k].end()) return &*it;
    }
    return nullptr;
  }
  [[noreturn]] void bad(const std::string& msg) { fail(where_, msg); }
  double num(const V& v, const std::string& op) {
    if (!v.j.is_number() && !v.j.is_boolean()) bad("'" + op + "' needs numbers, got " + py_repr(v.j));
    return v.j.is_boolean() ? (double)v.j.get<bool>() : v.j.get<double>();
  }
  static bool is_int(const V& v) { return v.j.is_number_integer() || v.j.is_boolean(); }

  V index(const V& obj, const V& key) {
    if (obj.j.is_object() && key.j.is_string()) {
      auto it = obj.j.find(key.j.get<std::string>());
      return it == obj.j.end() ? undef() : V{*it};
    }
    if ((obj.j.is_array() || obj.j.is_string()) && key.j.is_number_integer()) {
      int64_t n = obj.j.is_array() ? (int64_t)obj.j.size() : (int64_t)obj.j.get<std::string>().size();
      int64_t i = key.j.get<int64_t>();
      if (i < 0) i += n;
      if (i < 0 || i >= n) return undef();
      if (obj.j.is_array()) return V{obj.j[i]};
      return V{std::string(1, obj.j.get<std::string>()[i])};
    }
    return undef();
  }

  V call_method(const V& obj, const std::string& m, const std::vector<V>& a) {
    if (obj.j.is_string()) {
      const std::string s = obj.j.get<std::string>();
      std::string chars = a.empty() ? kBlank : a[0].j.get<std::string>();
      if (m == "strip") return V{strip(s, chars, true, true)};
      if (m == "lstrip") return V{strip(s, chars, true, false)};
      if (m == "rstrip") return V{strip(s, chars, false, true)};
      if (m == "upper" || m == "lower") {
        std::string r = s;
        for (char& c : r)
          c = m == "upper" ? (char)std::toupper((unsigned char)c) : (char)std::tolower((unsigned char)c);
        return V{r};
      }
      if ((m == "startswith" || m == "endswith") && a.size() == 1 && a[0].j.is_string()) {
        const std::string p = a[0].j.get<std::string>();
        bool r =
            s.size() >= p.size() && (m == "startswith" ? s.compare(0, p.size(), p) == 0
                                                       : s.compare(s.size() - p.size(), p.size(), p) == 0);
        return V{r};
      }
      if (m == "split") {
        json parts = json::array();
        if (a.empty()) {
          std::istringstream is(s);
          for (std::string w; is >> w;) parts.push_back(w);
        } else {
          const std::string sep = a[0].j.get<std::string>();
          size_t p = 0, q;
          while (!sep.empty() && (q = s.find(sep, p)) != std::string::npos) {
            parts.push_back(s.substr(p, q - p));
            p = q + sep.size();
          }
          parts.push_back(s.substr(p));
        }
        return V{parts};
      }
      if (m == "replace" && a.size() == 2)
        return V{replace_all(s, a[0].j.get<std::string>(), a[1].j.get<std::string>())};
    }
    if (obj.j.is_object()) {
      if (m == "get" && !a.empty()) {
        V r = index(obj, a[0]);
        return r.undef ? (a.size() > 1 ? a[1] : V{nullptr}) : r;
      }
      if (m == "items" || m == "keys" || m == "values") {
        json r = json::array();
        for (auto it = obj.j.begin(); it != obj.j.end(); ++it)
          r.push_back(m == "items" ? json::array({it.key(), *it}) : m == "keys" ? json(it.key()) : *it);
        return V{r};
      }
    }
    bad("unsupported method '" + m + "' on " + py_repr(obj.j));
  }
  static std::string replace_all(std::string s, const std::string& from, const std::string& to) {
    if (from.empty()) return s;
    for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size())
      s.replace(p, from.size(), to);
    return s;
  }

  V filter(const std::string& f, const V& v, const std::vector<V>& a) {
    if (f == "trim") return V{strip(to_text(v), a.empty() ? kBlank : a[0].j.get<std::string>(), true, true)};
    if (f == "length" || f == "count") {
      if (v.j.is_string()) return V{(int64_t)v.j.get<std::string>().size()};
      return V{(int64_t)(v.undef || v.j.is_null() ? 0 : v.j.size())};
    }
    if (f == "tojson") return V{to_json(v.j)};
    if (f == "upper" || f == "lower") return call_method(V{to_text(v)}, f, {});
    if (f == "capitalize") {
      std::string s = to_text(v);
      for (size_t i = 0; i < s.size(); ++i)
        s[i] = i == 0 ? (char)std::toupper((unsigned char)s[i]) : (char)std::tolower((unsigned char)s[i]);
      return V{s};
    }
    if (f == "first" || f == "last") {
      if (v.j.is_array() && !v.j.empty()) return V{f == "first" ? v.j.front() : v.j.back()};
      if (v.j.is_string() && !v.j.get<std::string>().empty())
        return index(v, V{(int64_t)(f == "first" ? 0 : -1)});
      return undef();
    }
    if (f == "default" || f == "d") {
      bool use = v.undef || (a.size() > 1 && truthy(a[1]) && !truthy(v));
      return use ? (a.empty() ? V{""} : a[0]) : v;
    }
    if (f == "join") {
      std::string sep = a.empty() ? "" : to_text(a[0]), r;
      for (size_t i = 0; v.j.is_array() && i < v.j.size(); ++i) r += (i ? sep : "") + to_text(V{v.j[i]});
      return V{r};
    }
    if (f == "string") return V{to_text(v)};
    if (f == "int")
      return V{v.j.is_string() ? (int64_t)std::atoll(v.j.get<std::string>().c_str())
                               : (int64_t)num(v, "int")};
    if (f == "list") return v.j.is_array() ? v : V{json::array()};
    if (f == "replace" && a.size() == 2) return V{replace_all(to_text(v), to_text(a[0]), to_text(a[1]))};
    if (f == "items") return call_method(v, "items", {});
    if (f == "safe") return v;
    bad("unsupported filter '" + f + "'");
  }

  bool test(const std::string& t, const V& v) {
    if (t == "defined") return !v.undef;
    if (t == "undefined") return v.undef;
    if (t == "none") return !v.undef && v.j.is_null();
    if (t == "string") return v.j.is_string();
    if (t == "number") return v.j.is_number();
    if (t == "integer") return v.j.is_number_integer();
    if (t == "float") return v.j.is_number_float();
    if (t == "boolean") return v.j.is_boolean();
    if (t == "true" || t == "false") return v.j.is_boolean() && v.j.get<bool>() == (t == "true");
    if (t == "mapping") return v.j.is_object();
    if (t == "sequence" || t == "iterable") return v.j.is_array() || v.j.is_string() || v.j.is_object();
    if (t == "even" || t == "odd") return is_int(v) && (v.j.get<int64_t>() % 2 == 0) == (t == "even");
    bad("unsupported test 'is " + t + "'");
  }

 public:
  V eval(const Expr& e) {
    switch (e.kind) {
      case Ek::Lit:
        return V{e.lit};
      case Ek::Var: {
        json* j = lookup(e.name);
        return j ? V{*j} : undef();
      }
      case Ek::Attr: {
        V o = eval(*e.args[0]);
        return o.j.is_object() ? index(o, V{e.name}) : undef();
      }
      case Ek::Index:
        return index(eval(*e.args[0]), eval(*e.args[1]));
      case Ek::Slice: {
        V o = eval(*e.args[0]), lo = eval(*e.args[1]), hi = eval(*e.args[2]);
        const bool str = o.j.is_string();
        if (!str && !o.j.is_array()) bad("cannot slice " + py_repr(o.j));
        int64_t n = str ? (int64_t)o.j.get<std::string>().size() : (int64_t)o.j.size();
        auto clampi = [n](const V& x, int64_t dflt) {
          if (x.undef || x.j.is_null()) return dflt;
          int64_t i = x.j.get<int64_t>();
          if (i < 0) i += n;
          return std::max<int64_t>(0, std::min(n, i));
        };
        int64_t b = clampi(lo, 0), en = clampi(hi, n);
        if (str) return V{en > b ? o.j.get<std::string>().substr(b, en - b) : std::string()};
        json r = json::array();
        for (int64_t i = b; i < en; ++i) r.push_back(o.j[i]);
        return V{r};
      }
      case Ek::List: {
        json r = json::array();
        for (const ExprP& a : e.args) r.push_back(eval(*a).j);
        return V{r};
      }
      case Ek::Dict: {
        json r = json::object();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2)
          r[to_text(eval(*e.args[i]))] = eval(*e.args[i + 1]).j;
        return V{r};
      }
      case Ek::Cond:
        return truthy(eval(*e.args[0])) ? eval(*e.args[1]) : eval(*e.args[2]);
      case Ek::Unary: {
        V a = eval(*e.args[0]);
        if (e.name == "not") return V{!truthy(a)};
        if (is_int(a)) return V{-a.j.get<int64_t>()};
        return V{-num(a, "-")};
      }
      case Ek::Test: {
        bool r = test(e.name, eval(*e.args[0]));
        return V{e.negate ? !r : r};
      }
      case Ek::Filter: {
        std::vector<V> a;
        for (size_t i = 1; i < e.args.size(); ++i) a.push_back(eval(*e.args[i]));
        return filter(e.name, eval(*e.args[0]), a);
      }
      case Ek::Call: {
        std::vector<V> a;
        for (size_t i = 1; i < e.args.size(); ++i) a.push_back(eval(*e.args[i]));
        const Expr& callee = *e.args[0];
        if (callee.kind == Ek::Attr) return call_method(eval(*callee.args[0]), callee.name, a);
        if (callee.kind == Ek::Var && callee.name == "raise_exception")
          throw_error(ErrorKind::Config, where_.empty() ? "" : where_ + ": ",
                      "the chat template raised: ", a.empty() ? "" : to_text(a[0]));
        if (callee.kind == Ek::Var && callee.name == "namespace") {
          json ns = json::object();
          for (const auto& [k, x] : e.kwargs) ns[k] = eval(*x).j;
          return V{ns};
        }
        if (callee.kind == Ek::Var && callee.name == "range" && !a.empty()) {
          json r = json::array();
          int64_t lo = a.size() > 1 ? a[0].j.get<int64_t>() : 0, hi = a.back().j.get<int64_t>();
          for (int64_t i = lo; i < hi; ++i) r.push_back(i);
          return V{r};
        }
        bad("unsupported function call '" + (callee.kind == Ek::Var ? callee.name : std::string("?")) +
            "(...)'");
      }
      case Ek::Binary:
        return binary(e);
    }
    bad("bad expression");
  }

 private:
  V binary(const Expr& e) {
    const std::string& op = e.name;
    V a = eval(*e.args[0]);
    if (op == "and") return truthy(a) ? eval(*e.args[1]) : a;
    if (op == "or") return truthy(a) ? a : eval(*e.args[1]);
    V b = eval(*e.args[1]);
    if (op == "~") return V{to_text(a) + to_text(b)};
    if (op == "==") return V{a.undef == b.undef && a.j == b.j};
    if (op == "!=") return V{!(a.undef == b.undef && a.j == b.j)};
    if (op == "in" || op == "not in") {
      bool r = false;
      if (b.j.is_string() && a.j.is_string())
        r = b.j.get<std::string>().find(a.j.get<std::string>()) != std::string::npos;
      else if (b.j.is_array())
        for (const json& x : b.j) r = r || x == a.j;
      else if (b.j.is_object() && a.j.is_string())
        r = b.j.contains(a.j.get<std::string>());
      return V{op == "in" ? r : !r};
    }
    if (op == "+" && a.j.is_string() && b.j.is_string())
      return V{a.j.get<std::string>() + b.j.get<std::string>()};
    if (op == "+" && a.j.is_array() && b.j.is_array()) {
      json r = a.j;
      for (const json& x : b.j) r.push_back(x);
      return V{r};
    }
    if (op == "+" && (a.j.is_string() || b.j.is_string()))
      bad("cannot add " + py_repr(a.j) + " and " + py_repr(b.j) + " (use ~ to concatenate)");
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      bool r;
      if (a.j.is_string() && b.j.is_string()) {
        int c = a.j.get<std::string>().compare(b.j.get<std::string>());
        r = op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0;
      } else {
        double x = num(a, op), y = num(b, op);
        r = op == "<" ? x < y : op == ">" ? x > y : op == "<=" ? x <= y : x >= y;
      }
      return V{r};
    }
    if (is_int(a) && is_int(b) && op != "/") {
      int64_t x = a.j.is_boolean() ? a.j.get<bool>() : a.j.get<int64_t>();
      int64_t y = b.j.is_boolean() ? b.j.get<bool>() : b.j.get<int64_t>();
      if ((op == "//" || op == "%") && y == 0) bad("integer division by zero");
      if (op == "+") return V{x + y};
      if (op == "-") return V{x - y};
      if (op == "*") return V{x * y};
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        q -= 1;
        m += y;
      }  // Python floors
      return V{op == "//" ? q : m};
    }
    double x = num(a, op), y = num(b, op);
    if (op == "+") return V{x + y};
    if (op == "-") return V{x - y};
    if (op == "*") return V{x * y};
    if (op == "/") return V{x / y};
    if (op == "//") return V{std::floor(x / y)};
    if (op == "%") return V{x - y * std::floor(x / y)};
    bad("unsupported operator '" + op + "'");
  }

  std::vector<json> scopes_;
  std::string where_;
};

}  // namespace

std::string render_chat_template(const std::string& tmpl, const json& ctx, const std::string& context) {
  std::vector<Chunk> chunks = split_chunks(tmpl, context);
  StmtParser sp(chunks, context);
  std::string stop;
  std::unique_ptr<Parser> rest;
  std::vector<Node> nodes = sp.block({"endfor", "endif", "elif", "else"}, &stop, &rest);
  if (!stop.empty()) fail(context, "'" + stop + "' without its opening statement");
  Exec ex(ctx, context);
  ex.run(nodes);
  return ex.out;
}

std::vector<TextSegment> render_chat_segments(const std::string& tmpl, const json& messages,
                                              const std::string& bos_token, const std::string& eos_token,
                                              const std::string& context) {
  auto render = [&](size_t n, bool gen) {
    json ctx = {{"messages", json(messages.begin(), messages.begin() + n)},
                {"bos_token", bos_token},
                {"eos_token", eos_token},
                {"add_generation_prompt", gen}};
    return render_chat_template(tmpl, ctx, context);
  };
  const std::string full = render(messages.size(), false);
  std::vector<TextSegment> segs;
  size_t cursor = 0;
  try {
    for (size_t i = 0; i < messages.size(); ++i) {
      if (messages[i].value("role", "") != "assistant") continue;
      const std::string p = render(i, true), f = render(i + 1, false);
      if (full.compare(0, f.size(), f) != 0) return {{full, true}};
      // The prompt is what the generation prompt and the answered conversation share (some templates
      // add text after the generation prompt that the answered turn does not have, e.g. a newline).
      size_t plen = 0;
      while (plen < p.size() && plen < f.size() && p[plen] == f[plen]) ++plen;
      if (plen < cursor) return {{full, true}};
      if (plen > cursor) segs.push_back({full.substr(cursor, plen - cursor), false});
      segs.push_back({full.substr(plen, f.size() - plen), true});
      cursor = f.size();
    }
  } catch (const Error&) {  // a template that refuses a partial conversation: no masking possible
    return {{full, true}};
  }
  if (cursor < full.size()) segs.push_back({full.substr(cursor), false});
  return segs;
}

}  // namespace qtune
