// Chat templates (train/chat_template.h) against transformers' apply_chat_template output for the Llama 3,
// Qwen2, Mistral and ChatML templates (tests/fixtures/train/chat_templates.json from
// tools/make_trainer_fixtures.py), plus the interpreter's pieces and errors.
#include "train/chat_template.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

using nlohmann::json;
using namespace qtune;

namespace {

json load_fixture() {
  std::ifstream f(std::string(QTUNE_FIXTURES) + "/train/chat_templates.json");
  std::stringstream ss;
  ss << f.rdbuf();
  return json::parse(ss.str());
}

std::string render(const std::string& t, json ctx = json::object()) {
  return render_chat_template(t, ctx, "test");
}

}  // namespace

TEST(ChatTemplate, MatchesTransformers) {
  json fx = load_fixture();
  ASSERT_EQ(fx.size(), 4u);
  int checked = 0, errors = 0;
  for (const json& t : fx) {
    for (const json& c : t["cases"]) {
      json ctx = {{"messages", c["messages"]},
                  {"add_generation_prompt", c["add_generation_prompt"]},
                  {"bos_token", c["bos_token"]},
                  {"eos_token", c["eos_token"]}};
      if (c.contains("error")) {
        try {
          render_chat_template(t["template"], ctx, "row 3");
          ADD_FAILURE() << t["name"] << ": expected an error";
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find(c["error"].get<std::string>()), std::string::npos) << e.what();
          EXPECT_NE(std::string(e.what()).find("row 3"), std::string::npos) << e.what();
          ++errors;
        }
        continue;
      }
      EXPECT_EQ(render_chat_template(t["template"], ctx, ""), c["expected"].get<std::string>())
          << t["name"].get<std::string>() << " case " << checked;
      ++checked;
    }
  }
  EXPECT_GE(checked, 28);
  EXPECT_GE(errors, 2);
}

TEST(ChatTemplate, Expressions) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }}|{{ 7 // 2 }}|{{ -7 % 3 }}|{{ 'a' ~ 1 }}|{{ [1, 2, 3] | length }}"),
            "7|3|2|a1|3");
  EXPECT_EQ(render("{{ x[1:] }}{{ x[-1] }}", {{"x", "abc"}}), "bcc");
  EXPECT_EQ(render("{{ '  hi ' | trim }}|{{ 'Ab' | upper }}|{{ 'x' if y is defined else 'z' }}"), "hi|AB|z");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor "
                   "%}{{ ns.n }}"),
            "6");
  EXPECT_EQ(
      render("{% for m in ms %}{{ loop.index0 }}{{ m.r }}{% if not loop.last %},{% endif %}{% endfor %}",
             {{"ms", json::array({{{"r", "a"}}, {{"r", "b"}}})}}),
      "0a,1b");
  EXPECT_EQ(render("{% if a == 1 %}one{% elif a == 2 %}two{% else %}many{% endif %}", {{"a", 2}}), "two");
  EXPECT_EQ(
      render("{{ {'k': [1, 'v']} | tojson }}|{{ 'a,b'.split(',') | join('+') }}|{{ 'xy'.startswith('x') }}"),
      "{\"k\": [1, \"v\"]}|a+b|True");
  EXPECT_EQ(render("a  \n  {%- if true -%}  \n b {%- endif %}"), "ab");
  EXPECT_EQ(render("x\n  {% if true %}\ny{% endif %}"), "x\ny");  // lstrip_blocks + trim_blocks
}

TEST(ChatTemplate, Errors) {
  auto msg = [](const std::string& t) {
    try {
      render_chat_template(t, json::object(), "data.jsonl:4");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg("{% if x %}a").find("'if' without 'endif'"), std::string::npos);
  EXPECT_NE(msg("{{ x | frobnicate }}").find("unsupported filter 'frobnicate'"), std::string::npos);
  EXPECT_NE(msg("{% macro f() %}{% endmacro %}").find("unsupported statement"), std::string::npos);
  EXPECT_NE(msg("{{ raise_exception('nope') }}").find("data.jsonl:4: the chat template raised: nope"),
            std::string::npos);
  EXPECT_NE(msg("{{ 'a' + 1 }}").find("cannot add"), std::string::npos);
  EXPECT_NE(msg("{{ 'a }}").find("unterminated string"), std::string::npos);
}

TEST(ChatTemplate, AssistantSegments) {
  json fx = load_fixture();
  for (const json& t : fx) {
    const json& c = t["cases"][4];  // two assistant turns
    std::vector<TextSegment> segs = render_chat_segments(t["template"], c["messages"], "<s>", "</s>", "");
    std::string joined, trained;
    for (const TextSegment& s : segs) {
      joined += s.text;
      if (s.trained) trained += s.text;
    }
    EXPECT_EQ(joined, t["cases"][4]["expected"].get<std::string>()) << t["name"];
    EXPECT_NE(trained.find("Blue."), std::string::npos) << t["name"];
    EXPECT_NE(trained.find("Green!"), std::string::npos) << t["name"];
    EXPECT_EQ(trained.find("Name a colour"), std::string::npos) << t["name"];
    EXPECT_EQ(trained.find("Another"), std::string::npos) << t["name"];
  }
}
