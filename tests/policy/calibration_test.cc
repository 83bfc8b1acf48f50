// Learn-then-Test statistics of `ponder calibrate`: binomial tails against exact values
// (computed with Python's fractions), fixed-sequence stopping, the edge cases, the grids.

#include "policy/calibration.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace ponder::policy {
namespace {

TEST(BinomialTest, TailsMatchExactValues) {
  struct Case {
    int64_t k, n;
    double p, log_cdf;  // log P(Binomial(n, p) <= k), exact
  } cases[] = {
      {3, 10, 0.5, -1.7609878105613008},    // 176 / 1024
      {0, 100, 0.01, -1.0050335853501906},  // 0.99^100
      {2, 20, 0.1, -0.3901921283262837},
      {1, 600, 0.01, -4.075670620001347},
      {2, 600, 0.01, -2.795630706344582},
      {4, 1000, 0.01, -3.5513321361577255},
      {5, 1000, 0.01, -2.715988955681496},
      {50, 10000, 0.01, -17.67293178008549},  // 2.11e-8
      {0, 2000, 0.01, -20.10067170700131},
      {10, 100000, 0.5, -69214.69356391915},  // far below the smallest double
  };
  for (const Case& c : cases) {
    const double got = LogBinomialCdf(c.k, c.n, c.p);
    EXPECT_NEAR(got, c.log_cdf, 1e-9 * std::max(1.0, std::fabs(c.log_cdf)))
        << "k=" << c.k << " n=" << c.n << " p=" << c.p;
    EXPECT_NEAR(BinomialCdf(c.k, c.n, c.p), std::exp(c.log_cdf), 1e-12);
  }
}

TEST(BinomialTest, Boundaries) {
  const double kNegInf = -std::numeric_limits<double>::infinity();
  EXPECT_EQ(LogBinomialCdf(-1, 10, 0.3), kNegInf);
  EXPECT_EQ(LogBinomialCdf(10, 10, 0.3), 0.0);
  EXPECT_EQ(LogBinomialCdf(12, 10, 0.3), 0.0);
  EXPECT_EQ(LogBinomialCdf(0, 10, 0.0), 0.0);      // X is always 0
  EXPECT_EQ(LogBinomialCdf(9, 10, 1.0), kNegInf);  // X is always 10
  EXPECT_EQ(LogBinomialCdf(0, 0, 0.3), 0.0);
  EXPECT_TRUE(std::isnan(LogBinomialCdf(1, 10, 1.5)));
  EXPECT_TRUE(std::isnan(LogBinomialCdf(1, -1, 0.5)));
  // The CDF is non-decreasing in k and sums to 1 at n.
  double prev = 0.0;
  for (int64_t k = 0; k <= 40; ++k) {
    const double v = BinomialCdf(k, 40, 0.2);
    EXPECT_GE(v, prev);
    prev = v;
  }
  EXPECT_DOUBLE_EQ(prev, 1.0);
}

TEST(PValueTest, EdgeCases) {
  EXPECT_EQ(DisagreementPValue(0, 0, 0.01), 1.0);                            // n = 0: no evidence
  EXPECT_NEAR(DisagreementPValue(0, 100, 0.01), 0.3660323412732295, 1e-12);  // all agree
  EXPECT_EQ(DisagreementPValue(100, 100, 0.01), 1.0);                        // none agree
  // Smallest n certifying 0.99 at delta 0.05 with no disagreement: 0.99^299 <= 0.05 < 0.99^298.
  EXPECT_EQ(MinTokensForGuarantee(0.01, 0.05), 299);
  EXPECT_EQ(MaxRejectableDisagreements(298, 0.01, 0.05), -1);
  EXPECT_EQ(MaxRejectableDisagreements(299, 0.01, 0.05), 0);
  EXPECT_EQ(MaxRejectableDisagreements(600, 0.01, 0.05), 1);   // P(<=1) .017, P(<=2) .061
  EXPECT_EQ(MaxRejectableDisagreements(1000, 0.01, 0.05), 4);  // P(<=4) .029, P(<=5) .066
  EXPECT_EQ(MaxRejectableDisagreements(0, 0.01, 0.05), -1);
  EXPECT_EQ(MinTokensForGuarantee(0.5, 0.25), 2);  // 0.5^2 = 0.25 <= 0.25
}

TEST(TargetTest, Validation) {
  EXPECT_TRUE(ValidateTarget({0.99, 0.05}).ok());
  for (const CalibrationTarget& bad : std::vector<CalibrationTarget>{
           {1.0, 0.05}, {0.0, 0.05}, {1.5, 0.05}, {0.99, 0.0}, {0.99, 1.0}, {0.99, -0.1}}) {
    Status s = ValidateTarget(bad);
    EXPECT_FALSE(s.ok()) << bad.target_agreement << " " << bad.delta;
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  }
  EXPECT_FALSE(FixedSequenceTest({{1e-3, 10, 10}}, {std::nan(""), 0.05}).ok());
}

// Fixed-sequence testing: tightest first, stop at the first non-rejection, choose the last
// rejected. Target 0.99, delta 0.05; with n = 1000 up to 4 disagreements are rejected.
TEST(FixedSequenceTest, StopsAtFirstNonRejection) {
  const CalibrationTarget target{0.99, 0.05};
  struct Case {
    const char* name;
    std::vector<CandidateCount> candidates;
    size_t tested;  // how many are tested before stopping
    int chosen;
  } cases[] = {
      {"all certified", {{1, 1000, 1000}, {2, 999, 1000}, {3, 996, 1000}}, 3, 2},
      {"stops at the third",
       {{1, 1000, 1000}, {2, 998, 1000}, {3, 995, 1000}, {4, 1000, 1000}},
       3,
       1},  // the fourth would pass, but fixed-sequence never looks at it
      {"first fails", {{1, 990, 1000}, {2, 1000, 1000}}, 1, -1},
      {"none agree", {{1, 0, 1000}}, 1, -1},
      {"n = 0", {{1, 0, 0}, {2, 0, 0}}, 1, -1},
      {"too few tokens, all agree", {{1, 298, 298}}, 1, -1},
      {"just enough tokens", {{1, 299, 299}, {2, 298, 299}}, 2, 0},
      {"empty grid", {}, 0, -1},
  };
  for (const Case& c : cases) {
    auto r = FixedSequenceTest(c.candidates, target);
    ASSERT_TRUE(r.ok()) << c.name << ": " << r.status().ToString();
    EXPECT_EQ(r->tested.size(), c.tested) << c.name;
    EXPECT_EQ(r->chosen, c.chosen) << c.name;
    EXPECT_EQ(r->calibrated(), c.chosen >= 0) << c.name;
    for (size_t i = 0; i < r->tested.size(); ++i) {
      const CandidateTest& t = r->tested[i];
      EXPECT_EQ(t.rejected, t.p_value <= target.delta && t.count.total > 0) << c.name;
      // Everything before the last tested one was rejected.
      if (i + 1 < r->tested.size()) {
        EXPECT_TRUE(t.rejected) << c.name << " " << i;
      }
    }
    if (r->calibrated()) {
      // A rejected candidate's observed agreement is above the target (delta < 1/2).
      EXPECT_GT(double(r->tested[r->chosen].count.agree) / r->tested[r->chosen].count.total,
                target.target_agreement)
          << c.name;
    }
  }
}

TEST(FixedSequenceTest, RejectsInvalidCounts) {
  const CalibrationTarget target{0.99, 0.05};
  for (const auto& bad : std::vector<CandidateCount>{{1, 11, 10}, {1, -1, 10}, {1, 0, -5}}) {
    auto r = FixedSequenceTest({{0.5, 10, 10}, bad}, target);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("candidate 1"), std::string::npos) << r.status().message();
  }
}

TEST(GridTest, ValueRulesAreLogSpacedAroundTheDefault) {
  for (ExitRule rule : {ExitRule::kKl, ExitRule::kMinpKl, ExitRule::kEntropyDiff,
                        ExitRule::kLatentDiff, ExitRule::kCosine}) {
    const std::vector<double> grid = CandidateThresholds(rule, 10);
    const double d = DefaultThreshold(rule);
    ASSERT_EQ(grid.size(), 19u) << ExitRuleName(rule);
    EXPECT_NEAR(grid.front(), d * 1e-3, d * 1e-3 * 1e-9);
    EXPECT_NEAR(grid.back(), d * 1e3, d * 1e3 * 1e-9);
    EXPECT_NEAR(grid[9], d, d * 1e-9);  // the default itself is on the grid
    for (size_t i = 1; i < grid.size(); ++i) {
      EXPECT_NEAR(grid[i] / grid[i - 1], std::pow(10.0, 1.0 / 3), 0.01);  // tightest first
    }
  }
  const std::vector<double> kl = CandidateThresholds(ExitRule::kKl, 0);
  EXPECT_DOUBLE_EQ(kl[1], 2.15e-6);  // three significant digits
  EXPECT_DOUBLE_EQ(kl[2], 4.64e-6);
  EXPECT_TRUE(CandidateThresholds(ExitRule::kNone, 10).empty());
}

TEST(GridTest, ArgmaxStabilityCountsDownFromTheLongestUsefulStreak) {
  EXPECT_EQ(CandidateThresholds(ExitRule::kArgmaxStability, 5), (std::vector<double>{4, 3, 2, 1}));
  EXPECT_EQ(CandidateThresholds(ExitRule::kArgmaxStability, 1), (std::vector<double>{1}));
  const std::vector<double> many = CandidateThresholds(ExitRule::kArgmaxStability, 100);
  ASSERT_EQ(many.size(), static_cast<size_t>(kMaxStabilityCount));
  EXPECT_EQ(many.front(), kMaxStabilityCount);
  EXPECT_EQ(many.back(), 1);
  EXPECT_EQ(CandidateThresholds(ExitRule::kArgmaxStability, 0).size(),
            static_cast<size_t>(kMaxStabilityCount));
}

TEST(GridTest, ChecksPerTokenFollowsTheCadence) {
  auto cls = [](int min, int max, ExitRule rule, int every, int from) {
    TaskClass c;
    c.min_steps = min;
    c.max_steps = max;
    c.exit.rule = rule;
    c.exit.check_every = every;
    c.exit.check_from = from;
    return c;
  };
  struct Case {
    TaskClass c;
    int checks;
  } cases[] = {
      {cls(32, 64, ExitRule::kArgmaxStability, 2, 2), 17},  // 32, 34, ..., 64
      {cls(4, 8, ExitRule::kKl, 1, 2), 5},                  // 4..8
      {cls(1, 8, ExitRule::kKl, 1, 2), 7},                  // 2..8
      {cls(64, 96, ExitRule::kMinpKl, 4, 4), 9},            // 64, 68, ..., 96
      {cls(5, 16, ExitRule::kKl, 4, 2), 3},                 // 6, 10, 14
      {cls(4, 8, ExitRule::kKl, 1, 9), 0},                  // check_from past max... none
      {cls(4, 8, ExitRule::kNone, 1, 2), 0},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ChecksPerToken(c.c), c.checks)
        << c.c.min_steps << ".." << c.c.max_steps << " every " << c.c.exit.check_every << " from "
        << c.c.exit.check_from;
  }
}

}  // namespace
}  // namespace ponder::policy
