#include "policy/exit_controller.h"

#include <algorithm>
#include <limits>

namespace ponder::policy {

std::string_view ExitReasonName(ExitReason reason) {
  switch (reason) {
    case ExitReason::kNone:
      return "none";
    case ExitReason::kConverged:
      return "converged";
    case ExitReason::kMaxSteps:
      return "max_steps";
    case ExitReason::kBudget:
      return "budget";
    case ExitReason::kDeadline:
      return "deadline";
    case ExitReason::kLoad:
      return "load";
  }
  return "none";
}

ExitController::ExitController(const DepthPlan& plan)
    : plan_(plan),
      criterion_(plan.rule, plan.threshold),
      deadline_at_(plan.deadline_seconds > 0 ? plan.start_seconds + plan.deadline_seconds
                                             : std::numeric_limits<double>::infinity()) {}

void ExitController::BeginToken() {
  criterion_.Reset();
  token_counts_ = CheckCounts{};
}

bool ExitController::CheckDue(int step) const {
  if (plan_.rule == ExitRule::kNone) return false;
  if (step < plan_.check_from || step < plan_.min_steps) return false;
  const int every = std::max(1, plan_.check_every);
  return (step - plan_.check_from) % every == 0;
}

CheckNeed ExitController::Need(int step) const {
  CheckNeed need;
  need.due = CheckDue(step);
  if (!need.due) return need;
  switch (RequiredSignal(plan_.rule)) {
    case SignalKind::kLatent:
      need.latent = true;
      break;
    case SignalKind::kLogits:
      need.logits = true;
      need.gated = plan_.gate_latent_below.has_value();
      need.latent = need.gated;
      break;
    case SignalKind::kNone:
      break;
  }
  return need;
}

bool ExitController::GateOpen(double latent_diff) const {
  return !plan_.gate_latent_below.has_value() || latent_diff < *plan_.gate_latent_below;
}

void ExitController::Count(CheckKind kind) {
  if (kind == CheckKind::kLatent) {
    ++token_counts_.latent_checks;
    ++total_counts_.latent_checks;
  } else if (kind == CheckKind::kLogits) {
    ++token_counts_.logit_checks;
    ++total_counts_.logit_checks;
  }
}

bool ExitController::RunCheck(const CheckSignals& signals, Decision* decision) {
  switch (RequiredSignal(plan_.rule)) {
    case SignalKind::kNone:
      return false;
    case SignalKind::kLatent: {
      const std::optional<double>& value =
          plan_.rule == ExitRule::kCosine ? signals.cosine : signals.latent_diff;
      if (!value.has_value()) return false;
      Count(CheckKind::kLatent);
      decision->check = CheckKind::kLatent;
      decision->signal = *value;
      return criterion_.ObserveValue(*value);
    }
    case SignalKind::kLogits:
      break;
  }
  if (plan_.gate_latent_below.has_value()) {
    if (!signals.latent_diff.has_value()) return false;
    Count(CheckKind::kLatent);
    decision->check = CheckKind::kLatent;
    if (!GateOpen(*signals.latent_diff)) return false;
  }
  if (plan_.rule == ExitRule::kArgmaxStability) {
    if (!signals.argmax.has_value()) return false;
    Count(CheckKind::kLogits);
    decision->check = CheckKind::kLogits;
    const bool converged = criterion_.ObserveArgmax(*signals.argmax);
    decision->signal = criterion_.stable_checks();
    return converged;
  }
  if (!signals.logit_value.has_value()) return false;
  Count(CheckKind::kLogits);
  decision->check = CheckKind::kLogits;
  decision->signal = *signals.logit_value;
  return criterion_.ObserveValue(*signals.logit_value);
}

Decision ExitController::Decide(const StepInput& input) {
  Decision decision;
  auto exit = [&decision](ExitReason reason) {
    decision.action = Action::kExit;
    decision.reason = reason;
    return decision;
  };
  if (input.step < 1) return decision;
  if (input.now >= deadline_at_) return exit(ExitReason::kDeadline);
  if (input.step < plan_.min_steps) return decision;
  if (CheckDue(input.step) && RunCheck(input.signals, &decision)) {
    return exit(ExitReason::kConverged);
  }
  if (input.step >= plan_.max_steps) return exit(plan_.cap_reason);
  if (input.budget_exhausted) return exit(ExitReason::kBudget);
  if (input.load_cap > 0 && input.step >= std::max(input.load_cap, plan_.min_steps)) {
    return exit(ExitReason::kLoad);
  }
  return decision;
}

}  // namespace ponder::policy
