// group_by_weight_decay: see param_groups.h.
#include "optim/param_groups.h"

#include <algorithm>
#include <cctype>

namespace qtune {

namespace {

bool is_sep_or_edge(const std::string& s, int64_t i) {
  return i < 0 || i >= (int64_t)s.size() || s[i] == '.';
}

}  // namespace

bool decays(const std::string& param_name) {
  std::string s = param_name;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return (char)std::tolower(c); });
  if (s.find("bias") != std::string::npos || s.find("layernorm") != std::string::npos ||
      s.find("rmsnorm") != std::string::npos)
    return false;
  for (size_t at = s.find("norm"); at != std::string::npos; at = s.find("norm", at + 1)) {
    const bool after_ok = is_sep_or_edge(s, (int64_t)(at + 4));
    if (after_ok && (is_sep_or_edge(s, (int64_t)at - 1) || s[at - 1] == '_')) return false;
  }
  return true;
}

std::vector<ParamGroup> group_by_weight_decay(const std::vector<ParamRef>& params, double weight_decay) {
  std::vector<ParamGroup> groups(2);
  groups[0].weight_decay = weight_decay;
  groups[1].weight_decay = 0.0;
  for (const ParamRef& p : params) groups[decays(p.name) ? 0 : 1].params.push_back(p);
  return groups;
}

}  // namespace qtune
