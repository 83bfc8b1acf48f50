#pragma once

// Plain data crossing the policy boundary: what a request asks for, and the depth plan the
// planner makes of it. No behaviour here; see planner.h and exit_controller.h.

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/criteria.h"
#include "policy/profile.h"

namespace ponder::policy {

// Why a token stopped iterating (kNone while it continues).
enum class ExitReason {
  kNone,
  kConverged,  // the exit rule fired
  kMaxSteps,   // reached the class's max_steps
  kBudget,     // the tenant's budget ran out (plan degraded, or exhausted mid-request)
  kDeadline,   // the request's deadline passed (or its estimate capped the depth)
  kLoad,       // elastic depth: the scheduler lowered the cap under load
};

// "converged", "max_steps", "budget", "deadline", "load" ("none" for kNone); metric labels.
std::string_view ExitReasonName(ExitReason reason);

// A request as the policy sees it.
struct Request {
  std::string prompt;                     // the prompt text (routing matches on it)
  int prompt_tokens = 0;                  // prompt length in tokens
  std::optional<std::string> task_class;  // explicit class; wins over routing
  std::string tenant = "default";
  std::map<std::string, std::string> metadata;  // free-form, e.g. {"channel": "realtime"}
  std::optional<int> min_steps;                 // overrides of the class's depth range
  std::optional<int> max_steps;
  int deadline_ms = 0;                   // overrides the class's deadline when > 0
  std::optional<std::string> exit_rule;  // overrides the class's rule ("kl", ...)
  std::optional<double> exit_threshold;  // overrides the (rule's default) threshold
};

// What the scheduler and the ExitController run one request with.
struct DepthPlan {
  std::string profile;     // DomainProfile::name
  std::string task_class;  // TaskClass::name
  std::string tenant;
  int min_steps = 1;  // never exit a token before this many iterations (except deadline)
  int max_steps = 1;  // never run a token past this many iterations
  // The class's max_steps before budget/deadline/load adjustments.
  int class_max_steps = 1;
  // Why max_steps is below class_max_steps (kMaxSteps when it is not): the reason a token
  // stopping at max_steps is reported with.
  ExitReason cap_reason = ExitReason::kMaxSteps;
  ExitRule rule = ExitRule::kNone;
  double threshold = 0.0;
  int check_every = 1;
  int check_from = 1;
  std::optional<double> gate_latent_below;
  bool warm_start = false;
  std::string kv_strategy = "full";
  int priority = 0;
  double start_seconds = 0.0;     // when the request was planned (PlanContext::now)
  double deadline_seconds = 0.0;  // from start_seconds; 0 = none
  SamplingSpec sampling;
  // Every routing decision and adjustment in words, in order, e.g.
  // "budget: tenant acme exhausted (100.00 of 100.00 USD), degraded to min_steps 4".
  std::vector<std::string> reasons;
};

}  // namespace ponder::policy
