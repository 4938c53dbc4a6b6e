// A Jinja subset interpreter for Hugging Face chat templates (tokenizer_config.json "chat_template"),
// rendering like transformers' apply_chat_template (Jinja with trim_blocks and lstrip_blocks on).
//
// Supported: text, {{ expr }}, {% if/elif/else/endif %}, {% for x in expr %} (also "for a, b in ..."),
// {% set name = expr %} / {% set ns.attr = expr %}, {% break/continue %}, {# comments #}, "-" whitespace
// control; expressions with literals (strings, numbers, true/false/none, lists, dicts), variables, .attr
// and [index] / [a:b] access, + - * / // %, ~ concatenation, comparisons, in / not in, and/or/not,
// "a if c else b", tests (is defined/none/string/number/mapping/sequence/iterable, is not ...), filters
// trim/length/count/tojson/upper/lower/capitalize/first/last/default/join/string/int/list/replace/items,
// string methods (strip/lstrip/rstrip/startswith/endswith/split/upper/lower/replace) and dict
// .get/.items/.keys/.values, loop.first/last/index/index0/length, raise_exception(msg), namespace(...),
// range(n). Anything else throws ErrorKind::Config naming the construct (and the row, via context).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "train/dataset.h"

namespace qtune {

// Renders tmpl with the variables in ctx (an object: messages, bos_token, eos_token,
// add_generation_prompt, ...). raise_exception(msg) throws ErrorKind::Config with context + msg.
std::string render_chat_template(const std::string& tmpl, const nlohmann::json& ctx,
                                 const std::string& context);

// The conversation rendered into segments: the text of each assistant turn (as it appears in the full
// rendering) is trained, the rest is the prompt. Found by rendering each prefix of the conversation with
// add_generation_prompt (the prompt part is the longest common prefix of that rendering and the
// rendering with the assistant turn); when a template's prefixes do not line up with the full rendering,
// the whole text is one trained segment.
std::vector<TextSegment> render_chat_segments(const std::string& tmpl, const nlohmann::json& messages,
                                              const std::string& bos_token, const std::string& eos_token,
                                              const std::string& context);

}  // namespace qtune
