// Routing and planning: explicit class > ordered rules > default; budget, deadline and load
// adjustments, each explained in the plan's reasons.

#include "policy/planner.h"

#include <gtest/gtest.h>

#include <string>

#include "policy/exit_controller.h"
#include "policy/router.h"

namespace ponder::policy {
namespace {

constexpr const char* kProfile = R"({
  "name": "finance", "currency": "USD",
  "pricing": {"per_device_second": 0.0005},
  "default_class": "routine_transaction",
  "task_classes": [
    {"name": "routine_transaction", "min_steps": 4, "max_steps": 8,
     "exit": {"rule": "latent-diff"}, "priority": 7, "deadline_ms": 2000,
     "sampling": {"max_tokens": 10}},
    {"name": "market_analysis", "min_steps": 16, "max_steps": 32,
     "exit": {"rule": "kl", "threshold": 5e-4, "check_every": 2, "check_from": 2,
              "gate_latent_below": 0.1},
     "warm_start": true, "kv_strategy": "compress-s16", "priority": 6,
     "sampling": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 20}},
    {"name": "risk_assessment", "min_steps": 64, "max_steps": 96,
     "exit": {"rule": "argmax-stability"}},
    {"name": "short_note", "min_steps": 2, "max_steps": 4},
    {"name": "long_report", "min_steps": 8, "max_steps": 12}
  ],
  "routing": [
    {"class": "risk_assessment", "keywords": ["portfolio", "risk"]},
    {"class": "market_analysis", "metadata": {"channel": "realtime"}},
    {"class": "market_analysis", "metadata": {"channel": "batch", "desk": "fx"}},
    {"class": "routine_transaction", "regex": "\\btransf?er\\b"},
    {"class": "short_note", "max_prompt_chars": 5},
    {"class": "long_report", "min_prompt_chars": 40}
  ],
  "tenants": {
    "default": {"budget": 100.0, "window_seconds": 3600, "on_exhausted": "degrade"},
    "acme": {"budget": 50.0, "on_exhausted": "degrade"},
    "trial": {"budget": 5.0, "on_exhausted": "reject"}
  }
})";

// Matches no rule: routed to the default class, routine_transaction (4..8).
constexpr const char* kPlain = "Something else entirely";

class PlannerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<DomainProfile> parsed = ParseProfile(kProfile, "finance.json");
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    profile_ = std::move(parsed).value();
  }

  std::string RouteOf(const Request& request) {
    Result<Route> route = RouteRequest(request, profile_);
    EXPECT_TRUE(route.ok()) << route.status().ToString();
    return route.ok() ? route->task_class->name : "";
  }

  static Request Prompt(std::string text) {
    Request request;
    request.prompt = std::move(text);
    return request;
  }

  static bool HasReason(const DepthPlan& plan, const std::string& text) {
    for (const std::string& reason : plan.reasons) {
      if (reason.find(text) != std::string::npos) return true;
    }
    return false;
  }

  static std::string Reasons(const DepthPlan& plan) {
    std::string all;
    for (const std::string& reason : plan.reasons) all += reason + "\n";
    return all;
  }

  DomainProfile profile_;
  Planner planner_;
};

// ---- Routing.

TEST_F(PlannerTest, RoutingTable) {
  struct Case {
    const char* prompt;
    std::map<std::string, std::string> metadata;
    const char* expected;
  };
  const Case table[] = {
      {"What is the RISK of this position?", {}, "risk_assessment"},  // keyword, any case
      {"Rebalance my Portfolio", {}, "risk_assessment"},              // the other keyword
      {"How did the market move today?", {{"channel", "realtime"}}, "market_analysis"},
      {"How did the market move today?", {{"channel", "batch"}}, "routine_transaction"},
      {"How did the market move?", {{"channel", "batch"}, {"desk", "fx"}}, "market_analysis"},
      {"Please TRANSFER 10 to savings", {}, "routine_transaction"},  // regex, icase
      {"Please transfer", {}, "routine_transaction"},
      {"Transferred?", {}, "routine_transaction"},  // no word boundary after "transfer"? see below
      {"hi!", {}, "short_note"},                    // length <= 5
      {"\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9", {}, "short_note"},  // 5 code points, 10 bytes
      {"Tell me a long story about the history of the bond market please", {}, "long_report"},
      {"Something else", {}, "routine_transaction"},  // default class
      // First matching rule wins: keyword rule 0 before metadata rule 1.
      {"risk now", {{"channel", "realtime"}}, "risk_assessment"},
  };
  for (const Case& c : table) {
    Request request = Prompt(c.prompt);
    request.metadata = c.metadata;
    if (std::string(c.prompt) == "Transferred?") {
      // "transf?er\b" does not match inside "transferred": default class.
      EXPECT_EQ(RouteOf(request), "routine_transaction");
      Result<Route> route = RouteRequest(request, profile_);
      ASSERT_TRUE(route.ok());
      EXPECT_EQ(route->rule_index, -1);
      continue;
    }
    EXPECT_EQ(RouteOf(request), c.expected) << c.prompt;
  }
}

TEST_F(PlannerTest, ExplicitClassWinsOverRules) {
  Request request = Prompt("portfolio risk");
  request.task_class = "short_note";
  Result<Route> route = RouteRequest(request, profile_);
  ASSERT_TRUE(route.ok());
  EXPECT_EQ(route->task_class->name, "short_note");
  EXPECT_EQ(route->reason, "route: explicit class short_note");
}

TEST_F(PlannerTest, UnknownExplicitClassIsAnError) {
  Request request = Prompt(kPlain);
  request.task_class = "market_analysys";
  Result<DepthPlan> plan = planner_.Plan(request, profile_, {});
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(plan.status().message().find("did you mean \"market_analysis\"?"), std::string::npos)
      << plan.status().message();
}

TEST_F(PlannerTest, RuleReasonNamesTheRule) {
  Request request = Prompt("x");
  request.metadata["channel"] = "realtime";
  Result<Route> route = RouteRequest(request, profile_);
  ASSERT_TRUE(route.ok());
  EXPECT_EQ(route->rule_index, 1);
  EXPECT_EQ(route->reason, "route: rule /routing/1 -> market_analysis");
  EXPECT_EQ(RouteRequest(Prompt("zzz zzz"), profile_)->reason,
            "route: default class routine_transaction");
}

// ---- Planning.

TEST_F(PlannerTest, PlanCopiesTheClass) {
  Request request = Prompt(kPlain);
  request.metadata["channel"] = "realtime";
  request.tenant = "acme";
  PlanContext context;
  context.now = 42.0;
  Result<DepthPlan> plan = planner_.Plan(request, profile_, context);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->profile, "finance");
  EXPECT_EQ(plan->task_class, "market_analysis");
  EXPECT_EQ(plan->tenant, "acme");
  EXPECT_EQ(plan->min_steps, 16);
  EXPECT_EQ(plan->max_steps, 32);
  EXPECT_EQ(plan->class_max_steps, 32);
  EXPECT_EQ(plan->cap_reason, ExitReason::kMaxSteps);
  EXPECT_EQ(plan->rule, ExitRule::kKl);
  EXPECT_DOUBLE_EQ(plan->threshold, 5e-4);
  EXPECT_EQ(plan->check_every, 2);
  EXPECT_EQ(plan->check_from, 2);
  ASSERT_TRUE(plan->gate_latent_below.has_value());
  EXPECT_TRUE(plan->warm_start);
  EXPECT_EQ(plan->kv_strategy, "compress-s16");
  EXPECT_EQ(plan->priority, 6);
  EXPECT_DOUBLE_EQ(plan->sampling.temperature, 0.7);
  EXPECT_DOUBLE_EQ(plan->start_seconds, 42.0);
  EXPECT_DOUBLE_EQ(plan->deadline_seconds, 0.0);
  EXPECT_TRUE(HasReason(*plan, "route: rule /routing/1 -> market_analysis")) << Reasons(*plan);
}

TEST_F(PlannerTest, BudgetExhaustedDegradesToMinSteps) {
  Request request = Prompt(kPlain);
  request.task_class = "market_analysis";
  request.tenant = "acme";
  PlanContext context;
  context.tenant_spend["acme"] = 50.0;
  Result<DepthPlan> plan = planner_.Plan(request, profile_, context);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->min_steps, 16);
  EXPECT_EQ(plan->max_steps, 16);
  EXPECT_EQ(plan->class_max_steps, 32);
  EXPECT_EQ(plan->cap_reason, ExitReason::kBudget);
  EXPECT_TRUE(HasReason(*plan, "budget: tenant acme exhausted (spent 50.00 of 50.00 USD"))
      << Reasons(*plan);
  EXPECT_TRUE(HasReason(*plan, "degraded to min_steps 16")) << Reasons(*plan);

  // A token under this plan stops at 16 and says why.
  ExitController controller(*plan);
  controller.BeginToken();
  StepInput input;
  input.step = 16;
  input.signals.latent_diff = 0.5;
  const Decision decision = controller.Decide(input);
  EXPECT_EQ(decision.action, Action::kExit);
  EXPECT_EQ(decision.reason, ExitReason::kBudget);
}

TEST_F(PlannerTest, BudgetUnderLimitChangesNothing) {
  Request request = Prompt(kPlain);
  request.tenant = "acme";
  PlanContext context;
  context.tenant_spend["acme"] = 49.99;
  context.tenant_spend["other"] = 1e9;
  Result<DepthPlan> plan = planner_.Plan(request, profile_, context);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->max_steps, 8);
  EXPECT_FALSE(HasReason(*plan, "budget"));
}

TEST_F(PlannerTest, BudgetExhaustedRejects) {
  Request request = Prompt(kPlain);
  request.tenant = "trial";
  PlanContext context;
  context.tenant_spend["trial"] = 6.0;
  Result<DepthPlan> plan = planner_.Plan(request, profile_, context);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(plan.status().message().find("tenant trial exhausted"), std::string::npos)
      << plan.status().message();
}

TEST_F(PlannerTest, DefaultTenantBudgetAppliesToUnlistedTenants) {
  Request request = Prompt(kPlain);
  request.tenant = "newcomer";
  PlanContext context;
  context.tenant_spend["newcomer"] = 100.0;
  Result<DepthPlan> plan = planner_.Plan(request, profile_, context);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->max_steps, plan->min_steps);
  EXPECT_EQ(plan->cap_reason, ExitReason::kBudget);
}

TEST_F(PlannerTest, DeadlineCapsMaxSteps) {
  // routine_transaction: 4..8, 2000 ms, 10 tokens. At 20 ms/iteration one step of every
  // token costs 0.2 s, so 2 s affords 10 steps: no cap. At 40 ms: 0.4 s per step, 5 steps.
  Request request = Prompt(kPlain);
  PlanContext context;
  context.seconds_per_iteration = 0.020;
  Result<DepthPlan> loose = planner_.Plan(request, profile_, context);
  ASSERT_TRUE(loose.ok());
  EXPECT_EQ(loose->max_steps, 8);
  EXPECT_DOUBLE_EQ(loose->deadline_seconds, 2.0);

  context.seconds_per_iteration = 0.040;
  Result<DepthPlan> tight = planner_.Plan(request, profile_, context);
  ASSERT_TRUE(tight.ok());
  EXPECT_EQ(tight->max_steps, 5);
  EXPECT_EQ(tight->cap_reason, ExitReason::kDeadline);
  EXPECT_TRUE(HasReason(*tight, "deadline: 2000 ms for 10 tokens")) << Reasons(*tight);
  EXPECT_TRUE(HasReason(*tight, "max_steps 8 -> 5")) << Reasons(*tight);

  // Never below min_steps.
  context.seconds_per_iteration = 1.0;
  Result<DepthPlan> hopeless = planner_.Plan(request, profile_, context);
  ASSERT_TRUE(hopeless.ok());
  EXPECT_EQ(hopeless->max_steps, 4);
  EXPECT_TRUE(HasReason(*hopeless, "kept at min_steps")) << Reasons(*hopeless);

  // The request's deadline overrides the class's.
  request.deadline_ms = 8000;
  context.seconds_per_iteration = 0.040;
  Result<DepthPlan> relaxed = planner_.Plan(request, profile_, context);
  ASSERT_TRUE(relaxed.ok());
  EXPECT_EQ(relaxed->max_steps, 8);
  EXPECT_DOUBLE_EQ(relaxed->deadline_seconds, 8.0);

  // Unknown iteration time: no estimate, no cap.
  request.deadline_ms = 1;
  context.seconds_per_iteration = 0.0;
  EXPECT_EQ(planner_.Plan(request, profile_, context)->max_steps, 8);
}

TEST_F(PlannerTest, LoadLowersTheCapProportionally) {
  Request request = Prompt(kPlain);
  request.task_class = "market_analysis";  // 16..32
  PlanContext context;
  context.load_factor = 2.0;
  context.queue_depth = 12;
  Result<DepthPlan> plan = planner_.Plan(request, profile_, context);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->max_steps, 24);  // 16 + 16 / 2
  EXPECT_EQ(plan->cap_reason, ExitReason::kLoad);
  EXPECT_TRUE(HasReason(*plan, "load: factor 2.00 (queue 12), max_steps 32 -> 24"))
      << Reasons(*plan);

  context.load_factor = 100.0;
  EXPECT_EQ(planner_.Plan(request, profile_, context)->max_steps, 16);
  context.load_factor = 0.5;  // idle: no change (depth is never raised)
  Result<DepthPlan> idle = planner_.Plan(request, profile_, context);
  EXPECT_EQ(idle->max_steps, 32);
  EXPECT_FALSE(HasReason(*idle, "load"));
}

TEST_F(PlannerTest, AdjustmentsCompose) {
  Request request = Prompt(kPlain);
  request.task_class = "market_analysis";  // 16..32, 20 tokens
  request.deadline_ms = 12000;             // 20 tokens * 0.02 s = 0.4 s per step -> 30
  PlanContext context;
  context.seconds_per_iteration = 0.02;
  context.load_factor = 2.0;  // then 16 + (30 - 16) / 2 = 23
  Result<DepthPlan> plan = planner_.Plan(request, profile_, context);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->max_steps, 23);
  EXPECT_EQ(plan->cap_reason, ExitReason::kLoad);
  EXPECT_TRUE(HasReason(*plan, "max_steps 32 -> 30")) << Reasons(*plan);
  EXPECT_TRUE(HasReason(*plan, "max_steps 30 -> 23")) << Reasons(*plan);
}

TEST_F(PlannerTest, RequestOverrides) {
  Request request = Prompt(kPlain);
  request.min_steps = 2;
  request.max_steps = 6;
  request.exit_rule = "argmax-stability";
  Result<DepthPlan> plan = planner_.Plan(request, profile_, {});
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->min_steps, 2);
  EXPECT_EQ(plan->max_steps, 6);
  EXPECT_EQ(plan->rule, ExitRule::kArgmaxStability);
  EXPECT_DOUBLE_EQ(plan->threshold, 5);  // the new rule's default
  EXPECT_TRUE(HasReason(*plan, "request: steps 2..6 (class 4..8)")) << Reasons(*plan);

  request.exit_threshold = 3;
  EXPECT_DOUBLE_EQ(planner_.Plan(request, profile_, {})->threshold, 3);

  // A latent rule drops a logit gate.
  Request latent = Prompt(kPlain);
  latent.task_class = "market_analysis";
  latent.exit_rule = "cosine";
  EXPECT_FALSE(planner_.Plan(latent, profile_, {})->gate_latent_below.has_value());
}

TEST_F(PlannerTest, InvalidOverridesAreErrors) {
  Request inverted = Prompt(kPlain);
  inverted.max_steps = 2;  // below the class's min 4
  Result<DepthPlan> plan = planner_.Plan(inverted, profile_, {});
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(plan.status().message().find("min_steps 4, max_steps 2"), std::string::npos)
      << plan.status().message();

  Request huge = Prompt(kPlain);
  huge.max_steps = 5000;
  EXPECT_FALSE(planner_.Plan(huge, profile_, {}).ok());

  Request rule = Prompt(kPlain);
  rule.exit_rule = "klx";
  Result<DepthPlan> bad_rule = planner_.Plan(rule, profile_, {});
  ASSERT_FALSE(bad_rule.ok());
  EXPECT_NE(bad_rule.status().message().find("did you mean \"kl\"?"), std::string::npos);

  Request threshold = Prompt(kPlain);
  threshold.exit_threshold = -1;
  EXPECT_FALSE(planner_.Plan(threshold, profile_, {}).ok());
}

}  // namespace
}  // namespace ponder::policy
