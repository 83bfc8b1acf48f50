#pragma once

// Request classification: which TaskClass of a profile a request belongs to.

#include <string>

#include "core/status.h"
#include "policy/plan.h"
#include "policy/profile.h"

namespace ponder::policy {

// Regexes run on at most this many leading bytes of a prompt, which bounds the time (and
// the recursion depth of std::regex) a hostile prompt can cost.
inline constexpr size_t kRegexPromptLimit = 8192;

struct Route {
  const TaskClass* task_class = nullptr;  // points into the profile
  int rule_index = -1;                    // index into profile.routing; -1 if none matched
  std::string reason;                     // e.g. "route: rule /routing/1 -> market_analysis"
};

// True when every condition the rule gives holds for the request: any keyword occurs in
// the prompt (ASCII case-insensitive substring), the regex finds a match, the prompt length
// in code points is within [min_prompt_chars, max_prompt_chars], and every metadata pair
// equals the request's.
bool RuleMatches(const RoutingRule& rule, const Request& request);

// Explicit class wins (an unknown one is kInvalidArgument naming the nearest class), then
// the first matching rule in order, then the profile's default class.
[[nodiscard]] Result<Route> RouteRequest(const Request& request, const DomainProfile& profile);

}  // namespace ponder::policy
