#include "policy/router.h"

#include "policy/names.h"

namespace ponder::policy {

bool RuleMatches(const RoutingRule& rule, const Request& request) {
  if (!rule.keywords.empty()) {
    const std::string prompt = AsciiLower(request.prompt);
    bool any = false;
    for (const std::string& keyword : rule.keywords) {
      if (prompt.find(keyword) != std::string::npos) {
        any = true;
        break;
      }
    }
    if (!any) return false;
  }
  if (rule.regex.has_value()) {
    const std::string_view head = std::string_view(request.prompt).substr(0, kRegexPromptLimit);
    try {
      if (!std::regex_search(head.begin(), head.end(), *rule.regex)) return false;
    } catch (const std::regex_error&) {
      return false;  // too complex for this prompt: the rule does not match
    }
  }
  if (rule.min_prompt_chars > 0 || rule.max_prompt_chars > 0) {
    const size_t length = Utf8Length(request.prompt);
    if (length < static_cast<size_t>(rule.min_prompt_chars)) return false;
    if (rule.max_prompt_chars > 0 && length > static_cast<size_t>(rule.max_prompt_chars)) {
      return false;
    }
  }
  for (const auto& [key, value] : rule.metadata) {
    auto it = request.metadata.find(key);
    if (it == request.metadata.end() || it->second != value) return false;
  }
  return true;
}

Result<Route> RouteRequest(const Request& request, const DomainProfile& profile) {
  Route route;
  if (request.task_class.has_value()) {
    route.task_class = profile.FindClass(*request.task_class);
    if (route.task_class == nullptr) {
      std::vector<std::string> names;
      for (const TaskClass& cls : profile.task_classes) names.push_back(cls.name);
      return InvalidArgument(WithSuggestion(
          "request: unknown task class \"" + *request.task_class + "\" in profile " + profile.name,
          *request.task_class, names));
    }
    route.reason = "route: explicit class " + route.task_class->name;
    return route;
  }
  for (size_t i = 0; i < profile.routing.size(); ++i) {
    const RoutingRule& rule = profile.routing[i];
    if (!RuleMatches(rule, request)) continue;
    route.task_class = profile.FindClass(rule.task_class);
    if (route.task_class == nullptr) {
      // ParseProfile rejects such profiles; a hand-built one may still have it.
      return InvalidArgument("profile " + profile.name + ": /routing/" + std::to_string(i) +
                             "/class: unknown class \"" + rule.task_class + "\"");
    }
    route.rule_index = static_cast<int>(i);
    route.reason = "route: rule /routing/" + std::to_string(i) + " -> " + rule.task_class;
    return route;
  }
  route.task_class = profile.FindClass(profile.default_class);
  if (route.task_class == nullptr) {
    return InvalidArgument("profile " + profile.name + ": /default_class: unknown class \"" +
                           profile.default_class + "\"");
  }
  route.reason = "route: default class " + route.task_class->name;
  return route;
}

}  // namespace ponder::policy
