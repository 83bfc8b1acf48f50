// ExitController by simulation: tables of steps with signals and the expected decisions.

#include "policy/exit_controller.h"

#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace ponder::policy {
namespace {

DepthPlan MakePlan(ExitRule rule, int min_steps, int max_steps, double threshold = -1) {
  DepthPlan plan;
  plan.profile = "test";
  plan.task_class = "cls";
  plan.rule = rule;
  plan.threshold = threshold >= 0 ? threshold : DefaultThreshold(rule);
  plan.min_steps = min_steps;
  plan.max_steps = max_steps;
  plan.class_max_steps = max_steps;
  return plan;
}

// One row of a simulation table: the inputs of a step and what must come out.
struct Row {
  int step;
  CheckSignals signals;
  Action action;
  ExitReason reason;
  CheckKind check;
  double now = 0.0;
  bool budget_exhausted = false;
  int load_cap = 0;
};

constexpr Action kGo = Action::kContinue;
constexpr Action kStop = Action::kExit;

CheckSignals Logit(double value) {
  CheckSignals signals;
  signals.logit_value = value;
  return signals;
}
CheckSignals Latent(double value) {
  CheckSignals signals;
  signals.latent_diff = value;
  return signals;
}
CheckSignals Gated(double latent, std::optional<double> logit) {
  CheckSignals signals;
  signals.latent_diff = latent;
  signals.logit_value = logit;
  return signals;
}
CheckSignals Cosine(double latent, double cosine) {
  CheckSignals signals;
  signals.latent_diff = latent;
  signals.cosine = cosine;
  return signals;
}
CheckSignals Top(int64_t token) {
  CheckSignals signals;
  signals.argmax = token;
  return signals;
}
CheckSignals None() { return {}; }

StepInput Input(int step, const CheckSignals& signals) {
  StepInput input;
  input.step = step;
  input.signals = signals;
  return input;
}

void RunTable(ExitController& controller, const std::vector<Row>& table) {
  for (const Row& row : table) {
    StepInput input;
    input.step = row.step;
    input.now = row.now;
    input.signals = row.signals;
    input.budget_exhausted = row.budget_exhausted;
    input.load_cap = row.load_cap;
    const Decision decision = controller.Decide(input);
    const std::string where = "step " + std::to_string(row.step);
    EXPECT_EQ(decision.action, row.action) << where;
    EXPECT_EQ(ExitReasonName(decision.reason), ExitReasonName(row.reason)) << where;
    EXPECT_EQ(decision.check, row.check) << where;
  }
}

TEST(ExitControllerTest, ReasonNames) {
  EXPECT_EQ(ExitReasonName(ExitReason::kConverged), "converged");
  EXPECT_EQ(ExitReasonName(ExitReason::kMaxSteps), "max_steps");
  EXPECT_EQ(ExitReasonName(ExitReason::kBudget), "budget");
  EXPECT_EQ(ExitReasonName(ExitReason::kDeadline), "deadline");
  EXPECT_EQ(ExitReasonName(ExitReason::kLoad), "load");
}

TEST(ExitControllerTest, CadenceFromCheckFromEveryNAtOrAfterMinSteps) {
  DepthPlan plan = MakePlan(ExitRule::kKl, 4, 12);
  plan.check_from = 2;
  plan.check_every = 3;
  ExitController controller(plan);
  // Candidates 2, 5, 8, 11; 2 is below min_steps.
  std::vector<int> due;
  for (int step = 1; step <= 12; ++step) {
    if (controller.CheckDue(step)) due.push_back(step);
  }
  EXPECT_EQ(due, (std::vector<int>{5, 8, 11}));
  const CheckNeed need = controller.Need(5);
  EXPECT_TRUE(need.due);
  EXPECT_TRUE(need.logits);
  EXPECT_FALSE(need.latent);
  EXPECT_FALSE(controller.Need(6).due);
}

TEST(ExitControllerTest, NoneRuleNeverChecksAndRunsToMax) {
  ExitController controller(MakePlan(ExitRule::kNone, 2, 3));
  controller.BeginToken();
  RunTable(controller, {
                           {1, None(), kGo, ExitReason::kNone, CheckKind::kNone},
                           {2, Logit(0.0), kGo, ExitReason::kNone, CheckKind::kNone},
                           {3, Logit(0.0), kStop, ExitReason::kMaxSteps, CheckKind::kNone},
                       });
  EXPECT_EQ(controller.token_counts().logit_checks, 0);
}

TEST(ExitControllerTest, KlConvergesAndCountsLogitChecks) {
  ExitController controller(MakePlan(ExitRule::kKl, 1, 8, 1e-3));
  controller.BeginToken();
  RunTable(controller, {
                           {1, Logit(0.43), kGo, ExitReason::kNone, CheckKind::kLogits},
                           {2, Logit(0.02), kGo, ExitReason::kNone, CheckKind::kLogits},
                           {3, Logit(5e-4), kStop, ExitReason::kConverged, CheckKind::kLogits},
                       });
  EXPECT_EQ(controller.token_counts().logit_checks, 3);
  EXPECT_EQ(controller.token_counts().latent_checks, 0);
}

TEST(ExitControllerTest, NeverExitsBeforeMinSteps) {
  ExitController controller(MakePlan(ExitRule::kKl, 4, 8, 1e-3));
  controller.BeginToken();
  // Converged-looking signals before min_steps are not even checked.
  RunTable(controller, {
                           {1, Logit(0.0), kGo, ExitReason::kNone, CheckKind::kNone},
                           {2, Logit(0.0), kGo, ExitReason::kNone, CheckKind::kNone},
                           {3, Logit(0.0), kGo, ExitReason::kNone, CheckKind::kNone},
                           {4, Logit(0.0), kStop, ExitReason::kConverged, CheckKind::kLogits},
                       });
  EXPECT_EQ(controller.token_counts().logit_checks, 1);
}

TEST(ExitControllerTest, MaxStepsWhenNeverConverged) {
  ExitController controller(MakePlan(ExitRule::kKl, 2, 4, 1e-3));
  controller.BeginToken();
  RunTable(controller, {
                           {1, Logit(1.0), kGo, ExitReason::kNone, CheckKind::kNone},
                           {2, Logit(1.0), kGo, ExitReason::kNone, CheckKind::kLogits},
                           {3, Logit(1.0), kGo, ExitReason::kNone, CheckKind::kLogits},
                           {4, Logit(1.0), kStop, ExitReason::kMaxSteps, CheckKind::kLogits},
                       });
}

TEST(ExitControllerTest, ConvergedWinsOverMaxAtTheLastStep) {
  ExitController controller(MakePlan(ExitRule::kKl, 1, 2, 1e-3));
  controller.BeginToken();
  RunTable(controller, {
                           {1, Logit(1.0), kGo, ExitReason::kNone, CheckKind::kLogits},
                           {2, Logit(0.0), kStop, ExitReason::kConverged, CheckKind::kLogits},
                       });
}

TEST(ExitControllerTest, LatentRulesUseTheirOwnSignal) {
  ExitController latent(MakePlan(ExitRule::kLatentDiff, 1, 8, 0.03));
  latent.BeginToken();
  RunTable(latent, {
                       {1, Latent(0.5), kGo, ExitReason::kNone, CheckKind::kLatent},
                       // A logit value is ignored by a latent rule: no check without its signal.
                       {2, Logit(0.0), kGo, ExitReason::kNone, CheckKind::kNone},
                       {3, Latent(0.01), kStop, ExitReason::kConverged, CheckKind::kLatent},
                   });
  EXPECT_EQ(latent.token_counts().latent_checks, 2);
  EXPECT_EQ(latent.token_counts().logit_checks, 0);

  ExitController cosine(MakePlan(ExitRule::kCosine, 1, 8, 1e-3));
  cosine.BeginToken();
  EXPECT_TRUE(cosine.Need(1).latent);
  RunTable(cosine, {
                       {1, Cosine(0.0, 0.2), kGo, ExitReason::kNone, CheckKind::kLatent},
                       {2, Cosine(1.0, 1e-4), kStop, ExitReason::kConverged, CheckKind::kLatent},
                   });
}

TEST(ExitControllerTest, GateRunsTheLogitCheckOnlyBelowTheLatentThreshold) {
  DepthPlan plan = MakePlan(ExitRule::kKl, 1, 10, 1e-3);
  plan.gate_latent_below = 0.1;
  ExitController controller(plan);
  controller.BeginToken();
  const CheckNeed need = controller.Need(1);
  EXPECT_TRUE(need.latent);
  EXPECT_TRUE(need.logits);
  EXPECT_TRUE(need.gated);
  EXPECT_FALSE(controller.GateOpen(0.5));
  EXPECT_TRUE(controller.GateOpen(0.05));
  RunTable(controller,
           {
               // Gate shut: only the (free) latent check ran; even a tiny logit value is unused.
               {1, Gated(0.5, std::nullopt), kGo, ExitReason::kNone, CheckKind::kLatent},
               {2, Gated(0.3, 0.0), kGo, ExitReason::kNone, CheckKind::kLatent},
               // Gate open: the logit check runs.
               {3, Gated(0.05, 0.01), kGo, ExitReason::kNone, CheckKind::kLogits},
               // Gate open but the caller computed no logits: nothing more than latent.
               {4, Gated(0.05, std::nullopt), kGo, ExitReason::kNone, CheckKind::kLatent},
               {5, Gated(0.04, 1e-4), kStop, ExitReason::kConverged, CheckKind::kLogits},
           });
  EXPECT_EQ(controller.token_counts().latent_checks, 5);
  EXPECT_EQ(controller.token_counts().logit_checks, 2);
}

TEST(ExitControllerTest, ArgmaxStabilityStreakAcrossChecks) {
  DepthPlan plan = MakePlan(ExitRule::kArgmaxStability, 1, 20, 2);
  plan.check_every = 2;
  ExitController controller(plan);
  controller.BeginToken();
  RunTable(controller, {
                           {1, Top(7), kGo, ExitReason::kNone, CheckKind::kLogits},
                           {2, Top(9), kGo, ExitReason::kNone, CheckKind::kNone},
                           {3, Top(7), kGo, ExitReason::kNone, CheckKind::kLogits},
                           {5, Top(7), kStop, ExitReason::kConverged, CheckKind::kLogits},
                       });
}

TEST(ExitControllerTest, DeadlineExitsEvenBeforeMinSteps) {
  DepthPlan plan = MakePlan(ExitRule::kKl, 4, 8);
  plan.start_seconds = 10.0;
  plan.deadline_seconds = 1.0;
  ExitController controller(plan);
  controller.BeginToken();
  RunTable(controller, {
                           {1, None(), kGo, ExitReason::kNone, CheckKind::kNone, 10.5},
                           {2, None(), kStop, ExitReason::kDeadline, CheckKind::kNone, 11.0},
                       });
}

TEST(ExitControllerTest, BudgetExhaustedMidRequestExitsAtMinSteps) {
  ExitController controller(MakePlan(ExitRule::kKl, 2, 8));
  controller.BeginToken();
  RunTable(controller, {
                           {1, None(), kGo, ExitReason::kNone, CheckKind::kNone, 0, true},
                           {2, Logit(1.0), kStop, ExitReason::kBudget, CheckKind::kLogits, 0, true},
                       });
}

TEST(ExitControllerTest, LoadCapFromTheSchedulerNeverBelowMin) {
  ExitController controller(MakePlan(ExitRule::kKl, 3, 8));
  controller.BeginToken();
  RunTable(controller,
           {
               {1, None(), kGo, ExitReason::kNone, CheckKind::kNone, 0, false, 2},
               {2, None(), kGo, ExitReason::kNone, CheckKind::kNone, 0, false, 2},
               {3, Logit(1.0), kStop, ExitReason::kLoad, CheckKind::kLogits, 0, false, 2},
           });
}

TEST(ExitControllerTest, CappedPlanReportsWhyItsMaxIsLow) {
  DepthPlan plan = MakePlan(ExitRule::kKl, 2, 3);
  plan.class_max_steps = 8;
  plan.cap_reason = ExitReason::kBudget;
  ExitController controller(plan);
  controller.BeginToken();
  RunTable(controller, {
                           {2, Logit(1.0), kGo, ExitReason::kNone, CheckKind::kLogits},
                           {3, Logit(1.0), kStop, ExitReason::kBudget, CheckKind::kLogits},
                       });
}

TEST(ExitControllerTest, MissingSignalIsNoCheck) {
  ExitController controller(MakePlan(ExitRule::kEntropyDiff, 1, 4));
  controller.BeginToken();
  RunTable(controller, {{1, None(), kGo, ExitReason::kNone, CheckKind::kNone}});
  EXPECT_EQ(controller.token_counts().logit_checks, 0);
}

TEST(ExitControllerTest, BeginTokenResetsTheCriterionButTotalsAccumulate) {
  ExitController controller(MakePlan(ExitRule::kArgmaxStability, 1, 10, 1));
  controller.BeginToken();
  RunTable(controller, {
                           {1, Top(4), kGo, ExitReason::kNone, CheckKind::kLogits},
                           {2, Top(4), kStop, ExitReason::kConverged, CheckKind::kLogits},
                       });
  controller.BeginToken();
  // Same argmax as the last token's: a fresh token has no previous argmax, so no exit.
  RunTable(controller, {{1, Top(4), kGo, ExitReason::kNone, CheckKind::kLogits}});
  EXPECT_EQ(controller.token_counts().logit_checks, 1);
  EXPECT_EQ(controller.total_counts().logit_checks, 3);
}

// Decisions of one sequence do not depend on what its batch neighbours see.
TEST(ExitControllerTest, IndependentOfBatchNeighbours) {
  const DepthPlan plan = MakePlan(ExitRule::kKl, 2, 6, 1e-3);
  const std::vector<double> mine = {0.9, 0.1, 0.01, 1e-4, 0.5, 0.5};
  const std::vector<double> theirs = {1e-6, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6};
  auto run = [&](bool with_neighbour) {
    ExitController a(plan);
    ExitController b(plan);
    a.BeginToken();
    b.BeginToken();
    std::vector<int> decisions;
    for (int step = 1; step <= 6; ++step) {
      if (with_neighbour) {
        const StepInput other = Input(step, Logit(theirs[step - 1]));
        (void)b.Decide(other);
      }
      const StepInput input = Input(step, Logit(mine[step - 1]));
      const Decision decision = a.Decide(input);
      decisions.push_back(static_cast<int>(decision.reason));
      if (decision.action == Action::kExit) break;
    }
    return decisions;
  };
  EXPECT_EQ(run(false), run(true));
  EXPECT_EQ(run(false).size(), 4u);  // converged at step 4
}

// End to end with raw rows: a token whose distribution sharpens, tracked by SignalTracker.
TEST(ExitControllerTest, SimulatedTokenWithSignalTracker) {
  DepthPlan plan = MakePlan(ExitRule::kKl, 2, 16, 1e-3);
  plan.gate_latent_below = 0.15;
  ExitController controller(plan);
  SignalTracker tracker;
  const std::vector<float> s0 = {1.0f, 0.0f, 0.0f};
  tracker.Begin(s0);
  controller.BeginToken();
  int exit_step = 0;
  ExitReason reason = ExitReason::kNone;
  for (int step = 1; step <= 16; ++step) {
    // The latent settles geometrically; the logits sharpen towards token 2 and then settle.
    const float settle = static_cast<float>(std::pow(0.5, step));
    const std::vector<float> latent = {1.0f, 1.0f - settle, 0.5f};
    const float sharp = static_cast<float>(3.0 * (1.0 - std::pow(0.3, step)));
    const std::vector<float> logits = {0.0f, 0.5f, sharp, 0.1f};
    StepInput input = Input(step, None());
    const CheckNeed need = controller.Need(step);
    if (need.latent) input.signals.latent_diff = tracker.ObserveLatent(latent).latent_diff;
    if (need.logits && (!need.gated || controller.GateOpen(*input.signals.latent_diff))) {
      input.signals.logit_value = tracker.ObserveLogits(plan.rule, logits);
    }
    const Decision decision = controller.Decide(input);
    if (decision.action == Action::kExit) {
      exit_step = step;
      reason = decision.reason;
      break;
    }
  }
  EXPECT_EQ(reason, ExitReason::kConverged);
  EXPECT_GT(exit_step, 2);
  EXPECT_LT(exit_step, 16);
  EXPECT_LT(controller.token_counts().logit_checks, controller.token_counts().latent_checks);
}

}  // namespace
}  // namespace ponder::policy
