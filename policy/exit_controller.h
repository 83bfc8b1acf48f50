#pragma once

// ExitController: the per-sequence decision after each core iteration of a token — run
// another iteration, or exit (and why). One controller per sequence; its state depends only
// on that sequence's plan and signals, so a decision never depends on batch neighbours.
//
// The scheduler's loop for one sequence and one token:
//
//   controller.BeginToken();
//   for (int step = 1;; ++step) {
//     run one core iteration;
//     CheckNeed need = controller.Need(step);
//     StepInput in{.step = step, .now = clock()};
//     if (need.latent) in.signals.latent_diff / cosine = ...;            // free
//     if (need.logits && (!need.gated || controller.GateOpen(latent_diff)))
//       in.signals.logit_value / argmax = ...;                           // coda + head
//     Decision d = controller.Decide(in);
//     if (d.action == Action::kExit) break;   // d.reason says why
//   }
//
// Signals are those of criteria.h: against the previous *check* of the same token.

#include <cstdint>
#include <limits>
#include <optional>

#include "policy/criteria.h"
#include "policy/plan.h"

namespace ponder::policy {

// Signals of one check; absent ones were not computed.
struct CheckSignals {
  std::optional<double> latent_diff;  // latent-diff rule and the gate
  std::optional<double> cosine;       // cosine rule
  std::optional<double> logit_value;  // kl / minp-kl / entropy-diff value
  std::optional<int64_t> argmax;      // argmax-stability
};

struct StepInput {
  int step = 0;      // iterations completed for this token, 1-based
  double now = 0.0;  // seconds, on the clock of DepthPlan::start_seconds
  CheckSignals signals;
  bool budget_exhausted = false;  // the tenant ran out of budget while the request runs
  int load_cap = 0;               // elastic cap set by the scheduler under load; 0 = none
};

// What a step needs computed before Decide.
struct CheckNeed {
  bool due = false;     // a check happens at this step
  bool latent = false;  // compute latent_diff / cosine (free)
  bool logits = false;  // compute the logit signal (one coda + head pass)
  bool gated = false;   // ... only when GateOpen(latent_diff)
};

enum class Action { kContinue, kExit };

enum class CheckKind { kNone, kLatent, kLogits };

struct Decision {
  Action action = Action::kContinue;
  ExitReason reason = ExitReason::kNone;
  // The most expensive check this step ran (a gated logit check that opened counts as
  // kLogits; one whose gate stayed shut as kLatent).
  CheckKind check = CheckKind::kNone;
  // The rule's value at this check (argmax-stability: the streak); NaN when the rule was
  // not evaluated (no check, or a shut gate).
  double signal = std::numeric_limits<double>::quiet_NaN();
};

// Checks run, for telemetry to cost them: a logit check is one coda + head pass. A gated
// check counts one latent check, plus one logit check when the gate opens.
struct CheckCounts {
  int64_t latent_checks = 0;
  int64_t logit_checks = 0;
};

class ExitController {
 public:
  explicit ExitController(const DepthPlan& plan);

  // Starts a new token: resets the criterion state and the token's counts.
  void BeginToken();

  // Cadence: a check is due at step s when s >= check_from, (s - check_from) % check_every
  // == 0 and s >= min_steps, and the rule is not none.
  bool CheckDue(int step) const;
  CheckNeed Need(int step) const;
  // For gated logit rules: whether this latent_diff lets the logit check run.
  bool GateOpen(double latent_diff) const;

  // Order: deadline (now >= start + deadline, even before min_steps), then nothing before
  // min_steps, then converged, max_steps (reported with the plan's cap_reason), budget,
  // load. A due check whose signal is missing is skipped (counts nothing).
  Decision Decide(const StepInput& input);

  const DepthPlan& plan() const { return plan_; }
  const CheckCounts& token_counts() const { return token_counts_; }
  const CheckCounts& total_counts() const { return total_counts_; }

 private:
  // Runs the check (if signals allow) and records it; returns whether the rule converged.
  bool RunCheck(const CheckSignals& signals, Decision* decision);
  void Count(CheckKind kind);

  DepthPlan plan_;
  CriterionState criterion_;
  double deadline_at_;  // absolute seconds; +infinity when none
  CheckCounts token_counts_;
  CheckCounts total_counts_;
};

}  // namespace ponder::policy
