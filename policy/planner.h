#pragma once

// Planner: request + profile + the state of the server -> DepthPlan. A const functor over
// plain data (no clock reads, no locks): the same inputs give the same plan.

#include <map>
#include <string>

#include "core/status.h"
#include "policy/plan.h"
#include "policy/profile.h"

namespace ponder::policy {

// What the server looks like when the request is planned.
struct PlanContext {
  // Spend of each tenant in its current window (BudgetLedger::Snapshot(now)); a tenant
  // absent here has spent nothing.
  std::map<std::string, double> tenant_spend;
  double now = 0.0;  // seconds; stamped on the plan as the request's start
  // Wall-clock seconds one core iteration of one token takes under the current batch
  // (measured by the scheduler); 0 = unknown, no deadline cap.
  double seconds_per_iteration = 0.0;
  int queue_depth = 0;       // requests waiting (informational; reported in reasons)
  double load_factor = 1.0;  // demand / capacity; above 1 depth caps shrink (elastic depth)
};

class Planner {
 public:
  // Routing (explicit class > ordered rules > default class), request overrides, then the
  // adjustments, each explained in plan.reasons:
  //  - budget: the tenant's spend >= its budget -> `degrade` caps max_steps at min_steps,
  //    `reject` fails with kResourceExhausted;
  //  - deadline: max_steps <= deadline / (sampling.max_tokens * seconds_per_iteration),
  //    never below min_steps;
  //  - load: load_factor f > 1 -> max_steps = min + floor((max - min) / f).
  // Errors: unknown explicit class or exit rule, invalid overrides (kInvalidArgument),
  // rejected budget (kResourceExhausted).
  [[nodiscard]] Result<DepthPlan> Plan(const Request& request, const DomainProfile& profile,
                                       const PlanContext& context) const;
};

}  // namespace ponder::policy
