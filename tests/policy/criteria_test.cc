// Exit criteria against hand-computed values (the reference formulas of huginn.md §5).

#include "policy/criteria.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace ponder::policy {
namespace {

constexpr double kTol = 1e-6;  // logits are float; the math is double

// Logits whose softmax is exactly `probs` (up to float rounding).
std::vector<float> LogitsOf(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

std::vector<double> Exp(const std::vector<double>& log_probs) {
  std::vector<double> out;
  for (double lp : log_probs) out.push_back(std::exp(lp));
  return out;
}

TEST(ExitRuleTest, NamesRoundTripAndSuggest) {
  for (const std::string& name : ExitRuleNames()) {
    Result<ExitRule> rule = ParseExitRule(name);
    ASSERT_TRUE(rule.ok()) << name;
    EXPECT_EQ(ExitRuleName(*rule), name);
  }
  Result<ExitRule> bad = ParseExitRule("entropy_diff");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("did you mean \"entropy-diff\"?"), std::string::npos)
      << bad.status().message();
}

TEST(ExitRuleTest, SignalsAndAutoThresholds) {
  // Logit rules cost a coda + head pass; latent rules are free.
  EXPECT_EQ(RequiredSignal(ExitRule::kKl), SignalKind::kLogits);
  EXPECT_EQ(RequiredSignal(ExitRule::kMinpKl), SignalKind::kLogits);
  EXPECT_EQ(RequiredSignal(ExitRule::kEntropyDiff), SignalKind::kLogits);
  EXPECT_EQ(RequiredSignal(ExitRule::kArgmaxStability), SignalKind::kLogits);
  EXPECT_EQ(RequiredSignal(ExitRule::kLatentDiff), SignalKind::kLatent);
  EXPECT_EQ(RequiredSignal(ExitRule::kCosine), SignalKind::kLatent);
  EXPECT_EQ(RequiredSignal(ExitRule::kNone), SignalKind::kNone);
  EXPECT_DOUBLE_EQ(DefaultThreshold(ExitRule::kKl), 1e-3);
  EXPECT_DOUBLE_EQ(DefaultThreshold(ExitRule::kMinpKl), 1e-5);
  EXPECT_DOUBLE_EQ(DefaultThreshold(ExitRule::kEntropyDiff), 1e-3);
  EXPECT_DOUBLE_EQ(DefaultThreshold(ExitRule::kLatentDiff), 0.03);
  EXPECT_DOUBLE_EQ(DefaultThreshold(ExitRule::kCosine), 1e-3);
  EXPECT_DOUBLE_EQ(DefaultThreshold(ExitRule::kArgmaxStability), 5);
}

TEST(CriteriaTest, LogSoftmaxIsStableForLargeLogits) {
  // exp(1000) overflows; softmax(1000, 1000, 1001) = (1, 1, e) / (2 + e).
  const std::vector<float> logits = {1000.0f, 1000.0f, 1001.0f};
  const std::vector<double> p = Exp(LogSoftmax(logits));
  const double e = std::exp(1.0);
  EXPECT_NEAR(p[0], 1.0 / (2.0 + e), 1e-12);
  EXPECT_NEAR(p[1], 1.0 / (2.0 + e), 1e-12);
  EXPECT_NEAR(p[2], e / (2.0 + e), 1e-12);
}

TEST(CriteriaTest, KlOfTwoKnownDistributions) {
  // p = (1/2, 1/4, 1/4), q = (1/4, 1/2, 1/4):
  // KL(p || q) = 1/2 ln 2 + 1/4 ln(1/2) + 0 = 1/4 ln 2.
  const auto p = LogSoftmax(LogitsOf({0.5, 0.25, 0.25}));
  const auto q = LogSoftmax(LogitsOf({0.25, 0.5, 0.25}));
  EXPECT_NEAR(KlDivergence(p, q), 0.25 * std::log(2.0), kTol);
  EXPECT_NEAR(KlDivergence(p, q), 0.1732868, 1e-6);
  EXPECT_NEAR(KlDivergence(p, p), 0.0, kTol);
  // Asymmetric: KL(q || p) = 1/4 ln(1/2) + 1/2 ln 2 = 1/4 ln 2 too here; use a skewed pair.
  const auto r = LogSoftmax(LogitsOf({0.8, 0.1, 0.1}));
  const double expected = 0.5 * std::log(0.5 / 0.8) + 0.25 * std::log(0.25 / 0.1) * 2;
  EXPECT_NEAR(KlDivergence(p, r), expected, kTol);
}

TEST(CriteriaTest, KlAgainstUniformP0) {
  // p_0 uniform over V = 4; p_1 = (0.7, 0.1, 0.1, 0.1):
  // KL(u || p_1) = sum 1/4 (ln 1/4 - ln p_1) = -ln 4 - (ln 0.7 + 3 ln 0.1) / 4 = 0.429813.
  const auto p1 = LogSoftmax(LogitsOf({0.7, 0.1, 0.1, 0.1}));
  const double expected = -std::log(4.0) - 0.25 * (std::log(0.7) + 3 * std::log(0.1));
  EXPECT_NEAR(KlDivergence(UniformLogProbs(4), p1), expected, kTol);
  EXPECT_NEAR(expected, 0.429813, 1e-6);

  SignalTracker tracker;
  tracker.Begin({});
  EXPECT_NEAR(tracker.ObserveLogits(ExitRule::kKl, LogitsOf({0.7, 0.1, 0.1, 0.1})), expected, kTol);
  // The second check compares with the first, not with uniform.
  const auto p2 = LogSoftmax(LogitsOf({0.6, 0.2, 0.1, 0.1}));
  EXPECT_NEAR(tracker.ObserveLogits(ExitRule::kKl, LogitsOf({0.6, 0.2, 0.1, 0.1})),
              KlDivergence(p1, p2), kTol);
}

TEST(CriteriaTest, KlIgnoresZeroProbabilityTerms) {
  const std::vector<double> prev = {0.0, -std::numeric_limits<double>::infinity()};
  const std::vector<double> cur = {std::log(0.5), std::log(0.5)};
  EXPECT_NEAR(KlDivergence(prev, cur), std::log(2.0), kTol);
}

TEST(CriteriaTest, MinpFiltersSmallProbabilitiesToOneOverV) {
  // p = (0.9, 0.05, 0.05); 0.05 < 0.1 * 0.9 -> set to 1/3; renormalise (0.9, 1/3, 1/3).
  const auto filtered = Exp(MinpLogProbs(LogitsOf({0.9, 0.05, 0.05})));
  const double sum = 0.9 + 2.0 / 3.0;
  EXPECT_NEAR(filtered[0], 0.9 / sum, kTol);
  EXPECT_NEAR(filtered[1], (1.0 / 3.0) / sum, kTol);
  EXPECT_NEAR(filtered[2], (1.0 / 3.0) / sum, kTol);
  EXPECT_NEAR(filtered[0], 0.574468, 1e-6);
  // Nothing below 0.1 * max: unchanged.
  const auto kept = Exp(MinpLogProbs(LogitsOf({0.5, 0.3, 0.2})));
  EXPECT_NEAR(kept[0], 0.5, kTol);
  EXPECT_NEAR(kept[1], 0.3, kTol);
  EXPECT_NEAR(kept[2], 0.2, kTol);
  // Uniform stays uniform (so p_0 is the same for kl and minp-kl).
  const auto uniform = Exp(MinpLogProbs(std::vector<float>(5, 0.0f)));
  for (double p : uniform) EXPECT_NEAR(p, 0.2, kTol);
}

TEST(CriteriaTest, MinpKlFiltersBothDistributions) {
  // The reference keeps the *filtered* log-probs as the previous distribution, so the KL
  // compares filtered with filtered.
  const std::vector<double> a = {0.9, 0.05, 0.05};
  const std::vector<double> b = {0.8, 0.15, 0.05};
  const double sa = 0.9 + 2.0 / 3.0;         // a: both small entries -> 1/3
  const double sb = 0.8 + 0.15 + 1.0 / 3.0;  // b: only 0.05 < 0.08 -> 1/3
  const std::vector<double> fa = {0.9 / sa, (1.0 / 3) / sa, (1.0 / 3) / sa};
  const std::vector<double> fb = {0.8 / sb, 0.15 / sb, (1.0 / 3) / sb};
  double expected = 0;
  for (int i = 0; i < 3; ++i) expected += fa[i] * std::log(fa[i] / fb[i]);

  SignalTracker tracker;
  tracker.Begin({});
  tracker.ObserveLogits(ExitRule::kMinpKl, LogitsOf(a));
  EXPECT_NEAR(tracker.ObserveLogits(ExitRule::kMinpKl, LogitsOf(b)), expected, kTol);
  // ... and differs from the unfiltered KL.
  EXPECT_GT(std::abs(expected - KlDivergence(LogSoftmax(LogitsOf(a)), LogSoftmax(LogitsOf(b)))),
            1e-3);
}

TEST(CriteriaTest, EntropyAndEntropyDiffFromH0) {
  EXPECT_NEAR(Entropy(std::vector<float>(4, 1.0f)), std::log(4.0), kTol);
  // H(1/2, 1/4, 1/4) = 1/2 ln 2 + 1/2 ln 4 = 1.5 ln 2.
  EXPECT_NEAR(Entropy(LogitsOf({0.5, 0.25, 0.25})), 1.5 * std::log(2.0), kTol);

  SignalTracker tracker;
  tracker.Begin({});
  // First check against H_0 = 100.
  EXPECT_NEAR(tracker.ObserveLogits(ExitRule::kEntropyDiff, LogitsOf({0.5, 0.25, 0.25})),
              100.0 - 1.5 * std::log(2.0), kTol);
  EXPECT_NEAR(tracker.ObserveLogits(ExitRule::kEntropyDiff, std::vector<float>(3, 0.0f)),
              std::log(3.0) - 1.5 * std::log(2.0), kTol);
}

TEST(CriteriaTest, ArgmaxTakesTheFirstOfTies) {
  EXPECT_EQ(Argmax(std::vector<float>{0.1f, 0.7f, 0.7f, 0.2f}), 1);
  EXPECT_EQ(Argmax(std::vector<float>{}), -1);
}

TEST(CriteriaTest, LatentDiffAndCosine) {
  const std::vector<float> prev = {1.0f, 0.0f};
  const std::vector<float> cur = {1.0f, 1.0f};
  // ||(0, 1)|| / ||(1, 1)|| = 1 / sqrt 2; cos 45 degrees = 1 / sqrt 2.
  EXPECT_NEAR(LatentDiff(prev, cur), 1.0 / std::sqrt(2.0), kTol);
  EXPECT_NEAR(CosineDistance(prev, cur), 1.0 - 1.0 / std::sqrt(2.0), kTol);
  const std::vector<float> scaled = {3.0f, 0.0f};
  EXPECT_NEAR(LatentDiff(prev, scaled), 2.0 / 3.0, kTol);
  EXPECT_NEAR(CosineDistance(prev, scaled), 0.0, kTol);  // same direction
  const std::vector<float> zero = {0.0f, 0.0f};
  EXPECT_TRUE(std::isinf(LatentDiff(prev, zero)));
  EXPECT_TRUE(std::isinf(CosineDistance(zero, cur)));

  SignalTracker tracker;
  tracker.Begin(prev);  // s_0
  SignalTracker::LatentSignals first = tracker.ObserveLatent(cur);
  EXPECT_NEAR(first.latent_diff, 1.0 / std::sqrt(2.0), kTol);
  SignalTracker::LatentSignals second = tracker.ObserveLatent(cur);  // against the last one
  EXPECT_NEAR(second.latent_diff, 0.0, kTol);
  EXPECT_NEAR(second.cosine, 0.0, kTol);
}

struct ValueRow {
  double value;
  bool converged;
};

TEST(CriterionStateTest, ValueRuleTable) {
  CriterionState state(ExitRule::kKl, 1e-3);
  const std::vector<ValueRow> table = {
      {0.5, false},
      {std::numeric_limits<double>::quiet_NaN(), false},  // NaN never converges
      {1e-3, false},                                      // strict <
      {9e-4, true},
  };
  for (const ValueRow& row : table) {
    EXPECT_EQ(state.ObserveValue(row.value), row.converged) << row.value;
  }
  EXPECT_EQ(state.checks(), 4);
  state.Reset();
  EXPECT_FALSE(state.converged());
  EXPECT_EQ(state.checks(), 0);
}

TEST(CriterionStateTest, NoneNeverConverges) {
  CriterionState state(ExitRule::kNone, 1.0);
  EXPECT_FALSE(state.ObserveValue(0.0));
  EXPECT_FALSE(state.ObserveValue(-1.0));
}

TEST(CriterionStateTest, ArgmaxStabilityTable) {
  // The reference: streak = streak + 1 when the argmax equals the previous check's, else 0;
  // exit when streak >= threshold. The first check compares with "no argmax" (-1).
  CriterionState state(ExitRule::kArgmaxStability, 2);
  struct Row {
    int64_t argmax;
    int streak;
    bool converged;
  };
  const std::vector<Row> table = {
      {3, 0, false}, {3, 1, false}, {3, 2, true}, {5, 0, false},
      {5, 1, false}, {5, 2, true},  {5, 3, true},
  };
  for (size_t i = 0; i < table.size(); ++i) {
    EXPECT_EQ(state.ObserveArgmax(table[i].argmax), table[i].converged) << "row " << i;
    EXPECT_EQ(state.stable_checks(), table[i].streak) << "row " << i;
  }
}

}  // namespace
}  // namespace ponder::policy
