#include "policy/planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "policy/router.h"

namespace ponder::policy {
namespace {

std::string Fixed(double value, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*f", digits, value);
  return buffer;
}

std::string Str(int value) { return std::to_string(value); }

// Request overrides of depth and exit rule.
Status ApplyOverrides(const Request& request, DepthPlan* plan) {
  if (request.min_steps.has_value() || request.max_steps.has_value()) {
    const int min_steps = request.min_steps.value_or(plan->min_steps);
    const int max_steps = request.max_steps.value_or(plan->max_steps);
    if (min_steps < 1 || max_steps > kMaxStepsLimit || min_steps > max_steps) {
      return InvalidArgument(
          "request: steps override must satisfy 1 <= min_steps <= "
          "max_steps <= " +
          Str(kMaxStepsLimit) + " (got min_steps " + Str(min_steps) + ", max_steps " +
          Str(max_steps) + ")");
    }
    plan->reasons.push_back("request: steps " + Str(min_steps) + ".." + Str(max_steps) +
                            " (class " + Str(plan->min_steps) + ".." + Str(plan->max_steps) + ")");
    plan->min_steps = min_steps;
    plan->max_steps = max_steps;
  }
  if (request.exit_rule.has_value()) {
    Result<ExitRule> rule = ParseExitRule(*request.exit_rule);
    if (!rule.ok()) return rule.status().WithContext("request: exit_rule");
    if (*rule != plan->rule) {
      plan->rule = *rule;
      plan->threshold = DefaultThreshold(*rule);
      if (RequiredSignal(*rule) != SignalKind::kLogits) plan->gate_latent_below.reset();
      plan->reasons.push_back("request: exit rule " + std::string(ExitRuleName(*rule)));
    }
  }
  if (request.exit_threshold.has_value()) {
    const double threshold = *request.exit_threshold;
    const bool argmax = plan->rule == ExitRule::kArgmaxStability;
    if (!ThresholdSuits(plan->rule, threshold)) {
      return InvalidArgument(std::string("request: exit_threshold must be ") +
                             (argmax ? "a whole number >= 1" : "> 0") + " for rule " +
                             std::string(ExitRuleName(plan->rule)));
    }
    plan->threshold = threshold;
    plan->reasons.push_back("request: exit threshold " + Fixed(threshold, 6));
  }
  return Status::Ok();
}

// Lowers max_steps to `cap` (not below min_steps); returns whether it changed.
bool CapMax(DepthPlan* plan, int cap, ExitReason reason) {
  const int new_max = std::max(plan->min_steps, cap);
  if (new_max >= plan->max_steps) return false;
  plan->max_steps = new_max;
  plan->cap_reason = reason;
  return true;
}

}  // namespace

Result<DepthPlan> Planner::Plan(const Request& request, const DomainProfile& profile,
                                const PlanContext& context) const {
  PONDER_ASSIGN_OR_RETURN(Route route, RouteRequest(request, profile));
  const TaskClass& cls = *route.task_class;

  DepthPlan plan;
  plan.profile = profile.name;
  plan.task_class = cls.name;
  plan.tenant = request.tenant;
  plan.min_steps = cls.min_steps;
  plan.max_steps = cls.max_steps;
  plan.rule = cls.exit.rule;
  plan.threshold = cls.exit.threshold;
  plan.check_every = cls.exit.check_every;
  plan.check_from = cls.exit.check_from;
  plan.gate_latent_below = cls.exit.gate_latent_below;
  plan.warm_start = cls.warm_start;
  plan.kv_strategy = cls.kv_strategy;
  plan.priority = cls.priority;
  plan.sampling = cls.sampling;
  plan.start_seconds = context.now;
  plan.reasons.push_back(route.reason);
  PONDER_RETURN_IF_ERROR(ApplyOverrides(request, &plan));
  plan.class_max_steps = plan.max_steps;

  // Budget.
  if (const TenantBudget* budget = profile.FindTenant(request.tenant)) {
    auto it = context.tenant_spend.find(request.tenant);
    const double spent = it == context.tenant_spend.end() ? 0.0 : it->second;
    if (spent >= budget->budget) {
      const std::string what = "budget: tenant " + request.tenant + " exhausted (spent " +
                               Fixed(spent, 2) + " of " + Fixed(budget->budget, 2) + " " +
                               profile.currency + " in its " + Fixed(budget->window_seconds, 0) +
                               " s window)";
      if (budget->on_exhausted == OnExhausted::kReject) {
        return ResourceExhausted(what + "; profile " + profile.name +
                                 " rejects requests until the window rolls over");
      }
      const int before = plan.max_steps;
      if (CapMax(&plan, plan.min_steps, ExitReason::kBudget)) {
        plan.reasons.push_back(what + ", degraded to min_steps " + Str(plan.min_steps) +
                               " (max_steps " + Str(before) + ")");
      } else {
        plan.reasons.push_back(what + ", already at min_steps " + Str(plan.min_steps));
      }
    }
  }

  // Deadline.
  const int deadline_ms = request.deadline_ms > 0 ? request.deadline_ms : cls.deadline_ms;
  plan.deadline_seconds = deadline_ms / 1000.0;
  if (deadline_ms > 0 && context.seconds_per_iteration > 0) {
    const double per_step = plan.sampling.max_tokens * context.seconds_per_iteration;
    // The epsilon keeps an exact fit (2 s / 0.4 s = 5) from rounding down to 4.
    const double affordable = std::floor(plan.deadline_seconds / per_step + 1e-9);
    const int cap = affordable >= kMaxStepsLimit ? kMaxStepsLimit : static_cast<int>(affordable);
    const int before = plan.max_steps;
    if (CapMax(&plan, cap, ExitReason::kDeadline)) {
      std::string text =
          "deadline: " + Str(deadline_ms) + " ms for " + Str(plan.sampling.max_tokens) +
          " tokens at " + Fixed(context.seconds_per_iteration * 1e3, 3) + " ms/iteration affords " +
          Str(cap) + " steps, max_steps " + Str(before) + " -> " + Str(plan.max_steps);
      if (cap < plan.min_steps) text += " (kept at min_steps; the deadline may be missed)";
      plan.reasons.push_back(text);
    }
  }

  // Load (elastic depth).
  if (context.load_factor > 1.0) {
    const int span = plan.max_steps - plan.min_steps;
    const int cap = plan.min_steps + static_cast<int>(std::floor(span / context.load_factor));
    const int before = plan.max_steps;
    if (CapMax(&plan, cap, ExitReason::kLoad)) {
      plan.reasons.push_back("load: factor " + Fixed(context.load_factor, 2) + " (queue " +
                             Str(context.queue_depth) + "), max_steps " + Str(before) + " -> " +
                             Str(plan.max_steps));
    }
  }
  return plan;
}

}  // namespace ponder::policy
