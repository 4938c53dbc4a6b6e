// Template chunking, lexer and expression parser of the Jinja subset that chat templates use
// (train/chat_template.h lists it). Internal to train/: chat_template.cpp evaluates the trees built here.
#pragma once
#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace qtune::jinja {

[[noreturn]] void fail(const std::string& ctx, const std::string& msg);

// The template cut into text, {{ expression }} and {% statement %} chunks, with transformers' Jinja
// settings: "-" strips whitespace beside a tag, trim_blocks drops the newline after a block or comment
// tag, lstrip_blocks drops the blanks before one at the start of a line. Comments vanish.
enum class ChunkKind { Text, Expr, Stmt };
struct Chunk {
  ChunkKind kind;
  std::string src;  // the text, or the tag's inside
};
std::vector<Chunk> split_chunks(const std::string& tmpl, const std::string& ctx);

enum class Tk { Name, Str, Int, Float, Op, End };
struct Token {
  Tk kind;
  std::string s;
  double num = 0;
};
std::vector<Token> lex(const std::string& s, const std::string& ctx);

struct Expr;
using ExprP = std::shared_ptr<Expr>;
enum class Ek { Lit, Var, Attr, Index, Slice, Call, Filter, Test, Unary, Binary, Cond, List, Dict };
struct Expr {
  Ek kind;
  nlohmann::json lit;
  std::string name;         // Var / Attr / Filter / Test name, or the operator
  std::vector<ExprP> args;  // operands; Call: the callee first
  std::vector<std::pair<std::string, ExprP>> kwargs;
  bool negate = false;  // "is not"
};

inline ExprP mk(Ek k) {
  auto e = std::make_shared<Expr>();
  e->kind = k;
  return e;
}

// Precedence: if-else < or < and < not < comparisons, in, is < ~ < + - < * / // % < unary - < postfix
// (.attr [i] [a:b] (call) |filter) < literals, names, ( ), [ ], { }.
class Parser {
 public:
  Parser(const std::string& src, const std::string& ctx) : toks_(lex(src, ctx)), src_(src), ctx_(ctx) {}
  const Token& peek(size_t k = 0) const { return toks_[std::min(p_ + k, toks_.size() - 1)]; }
  bool is_op(const std::string& s, size_t k = 0) const { return peek(k).kind == Tk::Op && peek(k).s == s; }
  bool is_name(const std::string& s, size_t k = 0) const {
    return peek(k).kind == Tk::Name && peek(k).s == s;
  }
  Token next() { return toks_[p_ < toks_.size() - 1 ? p_++ : p_]; }
  void expect_op(const std::string& s) {
    if (!is_op(s)) fail(ctx_, "expected '" + s + "' in '" + src_ + "'");
    ++p_;
  }
  std::string name() {
    if (peek().kind != Tk::Name) fail(ctx_, "expected a name in '" + src_ + "'");
    return next().s;
  }
  bool done() const { return peek().kind == Tk::End; }
  void expect_end() {
    if (!done()) fail(ctx_, "unexpected '" + peek().s + "' in '" + src_ + "'");
  }

  ExprP expr() {  // a if c else b
    ExprP e = or_();
    if (is_name("if")) {
      ++p_;
      ExprP c = or_();
      ExprP f = mk(Ek::Lit);
      if (is_name("else")) {
        ++p_;
        f = expr();
      }
      ExprP r = mk(Ek::Cond);
      r->args = {c, e, f};
      return r;
    }
    return e;
  }

 private:
  ExprP bin(const std::string& op, ExprP a, ExprP b) {
    ExprP r = mk(Ek::Binary);
    r->name = op;
    r->args = {a, b};
    return r;
  }
  ExprP or_() {
    ExprP e = and_();
    while (is_name("or")) {
      ++p_;
      e = bin("or", e, and_());
    }
    return e;
  }
  ExprP and_() {
    ExprP e = not_();
    while (is_name("and")) {
      ++p_;
      e = bin("and", e, not_());
    }
    return e;
  }
  ExprP not_() {
    if (is_name("not")) {
      ++p_;
      ExprP r = mk(Ek::Unary);
      r->name = "not";
      r->args = {not_()};
      return r;
    }
    return cmp();
  }
  ExprP cmp() {
    ExprP e = concat();
    for (;;) {
      if (is_op("==") || is_op("!=") || is_op("<") || is_op(">") || is_op("<=") || is_op(">=")) {
        std::string op = next().s;
        e = bin(op, e, concat());
      } else if (is_name("in")) {
        ++p_;
        e = bin("in", e, concat());
      } else if (is_name("not") && is_name("in", 1)) {
        p_ += 2;
        e = bin("not in", e, concat());
      } else if (is_name("is")) {
        ++p_;
        ExprP t = mk(Ek::Test);
        if (is_name("not")) {
          ++p_;
          t->negate = true;
        }
        t->name = name();
        t->args = {e};
        e = t;
      } else {
        return e;
      }
    }
  }
  ExprP concat() {
    ExprP e = add();
    while (is_op("~")) {
      ++p_;
      e = bin("~", e, add());
    }
    return e;
  }
  ExprP add() {
    ExprP e = mul();
    while (is_op("+") || is_op("-")) {
      std::string op = next().s;
      e = bin(op, e, mul());
    }
    return e;
  }
  ExprP mul() {
    ExprP e = unary();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = next().s;
      e = bin(op, e, unary());
    }
    return e;
  }
  ExprP unary() {
    if (is_op("-")) {
      ++p_;
      ExprP r = mk(Ek::Unary);
      r->name = "-";
      r->args = {unary()};
      return r;
    }
    return postfix();
  }
  void call_args(ExprP& c) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().kind == Tk::Name && is_op("=", 1)) {
        std::string k = name();
        ++p_;
        c->kwargs.push_back({k, expr()});
      } else {
        c->args.push_back(expr());
      }
      if (!is_op(")")) expect_op(",");
    }
    expect_op(")");
  }
  ExprP postfix() {
    ExprP e = primary();
    for (;;) {
      if (is_op(".")) {
        ++p_;
        ExprP a = mk(Ek::Attr);
        a->name = name();
        a->args = {e};
        e = a;
      } else if (is_op("[")) {
        ++p_;
        ExprP lo = mk(Ek::Lit), hi = mk(Ek::Lit);
        bool slice = false;
        if (!is_op(":")) lo = expr();
        if (is_op(":")) {
          slice = true;
          ++p_;
          if (!is_op("]")) hi = expr();
        }
        expect_op("]");
        ExprP r = mk(slice ? Ek::Slice : Ek::Index);
        r->args = slice ? std::vector<ExprP>{e, lo, hi} : std::vector<ExprP>{e, lo};
        e = r;
      } else if (is_op("(")) {
        ExprP c = mk(Ek::Call);
        c->args.push_back(e);  // callee first
        call_args(c);
        e = c;
      } else if (is_op("|")) {
        ++p_;
        ExprP f = mk(Ek::Filter);
        f->name = name();
        f->args = {e};
        if (is_op("(")) call_args(f);
        e = f;
      } else {
        return e;
      }
    }
  }
  ExprP primary() {
    Token t = next();
    ExprP e = mk(Ek::Lit);
    if (t.kind == Tk::Str) {
      e->lit = t.s;
      while (peek().kind == Tk::Str) e->lit = e->lit.get<std::string>() + next().s;  // adjacent literals
    } else if (t.kind == Tk::Int) {
      e->lit = (int64_t)t.num;
    } else if (t.kind == Tk::Float) {
      e->lit = t.num;
    } else if (t.kind == Tk::Name) {
      if (t.s == "true" || t.s == "True")
        e->lit = true;
      else if (t.s == "false" || t.s == "False")
        e->lit = false;
      else if (t.s == "none" || t.s == "None")
        e->lit = nullptr;
      else {
        e->kind = Ek::Var;
        e->name = t.s;
      }
    } else if (t.kind == Tk::Op && t.s == "(") {
      e = expr();
      expect_op(")");
    } else if (t.kind == Tk::Op && t.s == "[") {
      e->kind = Ek::List;
      while (!is_op("]")) {
        e->args.push_back(expr());
        if (!is_op("]")) expect_op(",");
      }
      expect_op("]");
    } else if (t.kind == Tk::Op && t.s == "{") {
      e->kind = Ek::Dict;
      while (!is_op("}")) {
        e->args.push_back(expr());
        expect_op(":");
        e->args.push_back(expr());
        if (!is_op("}")) expect_op(",");
      }
      expect_op("}");
    } else {
      fail(ctx_, "unexpected '" + t.s + "' in '" + src_ + "'");
    }
    return e;
  }

  std::vector<Token> toks_;
  size_t p_ = 0;
  std::string src_, ctx_;
};

}  // namespace qtune::jinja
