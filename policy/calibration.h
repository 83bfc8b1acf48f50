#pragma once

// Threshold calibration with a distribution-free guarantee: the statistics of
// `ponder calibrate` (Learn-then-Test, Angelopoulos et al. 2021, as CALM, Schuster et al.
// 2022, applies it to early exits). Pure functions over counts; no model, no threads. The
// runner that produces the counts is scenarios/calibrate.h.
//
// Setting. A class's exit rule with threshold λ produces tokens; a token "agrees" when the
// class's maximum-depth run (no early exit) produces the same token there and every earlier
// token agreed too. The risk of λ is its true disagreement rate R(λ). Given a target
// agreement 1 - ε and a level δ, we want a λ with R(λ) <= ε, and the procedure must be
// wrong with probability at most δ over the draw of the calibration set.
//
// Method. For each candidate λ the null hypothesis H_λ: R(λ) > ε is tested with the exact
// binomial p-value p(λ) = P(Binomial(n, ε) <= observed disagreements) (a super-uniform
// p-value under H_λ). Candidates are tested in a fixed order chosen before seeing data,
// tightest (safest) first; testing stops at the first p(λ) > δ. Fixed-sequence testing
// controls the family-wise error at δ without assuming R monotone in λ, so with probability
// >= 1 - δ every rejected λ — in particular the loosest one, the one chosen — has
// R(λ) <= ε.
//
// Assumptions, stated where they are used (policy/README.md, "Calibration"):
//  - the n compared tokens are exchangeable draws from the traffic the profile will serve
//    (tokens of one answer are not independent; many short answers make this reasonable,
//    few long ones do not);
//  - the calibration data are disjoint from any data the calibrated profile is evaluated
//    on (scenarios/workloads/calibration/ versus scenarios/workloads/).

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "policy/criteria.h"
#include "policy/profile.h"

namespace ponder::policy {

// log P(X <= k) for X ~ Binomial(n, p), summed in log space (lgamma terms, log-sum-exp), so
// that tails far below 1e-300 stay finite. k < 0: -infinity; k >= n: 0. Requires n >= 0
// and p in [0, 1] (outside: NaN).
double LogBinomialCdf(int64_t k, int64_t n, double p);
// exp(LogBinomialCdf(k, n, p)).
double BinomialCdf(int64_t k, int64_t n, double p);

// The Learn-then-Test p-value of H: disagreement rate > epsilon, from `disagreements` seen in
// `n` tokens: P(Binomial(n, epsilon) <= disagreements). n = 0 gives 1 (no evidence).
double DisagreementPValue(int64_t disagreements, int64_t n, double epsilon);

// The largest number of disagreements in n tokens that still rejects at level delta, or -1
// when even n agreeing tokens cannot (n is too small for the target).
int64_t MaxRejectableDisagreements(int64_t n, double epsilon, double delta);
// The fewest tokens for which n agreeing tokens reject: ceil(log(delta) / log(1 - epsilon)).
int64_t MinTokensForGuarantee(double epsilon, double delta);

struct CalibrationTarget {
  double target_agreement = 0.99;  // 1 - ε, in (0, 1)
  double delta = 0.05;             // level: P(guarantee fails) <= delta, in (0, 1)
  double epsilon() const { return 1.0 - target_agreement; }
};

// kInvalidArgument unless 0 < target_agreement < 1 and 0 < delta < 1.
[[nodiscard]] Status ValidateTarget(const CalibrationTarget& target);

// What one candidate threshold did on the calibration set.
struct CandidateCount {
  double threshold = 0.0;
  int64_t agree = 0;  // agreeing tokens, 0 <= agree <= total
  int64_t total = 0;  // compared tokens (the reference's tokens)
};

struct CandidateTest {
  CandidateCount count;
  double p_value = 1.0;
  bool rejected = false;  // p_value <= delta: H rejected, the threshold is certified
};

struct FixedSequenceResult {
  // The candidates tested, in the order given, up to and including the first one not
  // rejected (all of them when every one is rejected).
  std::vector<CandidateTest> tested;
  // Index in `tested` of the loosest rejected candidate (the last rejected one); -1 when the
  // first candidate is not rejected: no threshold of the grid is certified.
  int chosen = -1;
  bool calibrated() const { return chosen >= 0; }
};

// Fixed-sequence testing of `candidates`, ordered tightest first. An error (never a silent
// result) for an invalid target or invalid counts of any candidate, tested or not (agree >
// total, negative numbers).
[[nodiscard]] Result<FixedSequenceResult> FixedSequenceTest(
    const std::vector<CandidateCount>& candidates, const CalibrationTarget& target);

// One candidate's test (what FixedSequenceTest does to each element).
CandidateTest TestCandidate(const CandidateCount& count, const CalibrationTarget& target);

// ---- Candidate grids (fixed before any data is seen, as the method requires).

inline constexpr int kGridPerDecade = 3;     // value rules: 3 values per decade ...
inline constexpr int kGridDecadesBelow = 3;  // ... from default * 1e-3 ...
inline constexpr int kGridDecadesAbove = 3;  // ... to default * 1e3: 19 values
inline constexpr int kMaxStabilityCount = 16;

// The number of checks a token of this class can have: due steps s in
// [max(check_from, min_steps), max_steps] with (s - check_from) % check_every == 0 (the
// cadence of ExitController::CheckDue). 0 for rule none.
int ChecksPerToken(const TaskClass& task_class);

// The candidate thresholds of `rule`, tightest first:
//  - kl, minp-kl, entropy-diff, latent-diff, cosine (exit when signal < τ, so smaller is
//    tighter): 19 values d·10^(k/3), k = -9..9, d = DefaultThreshold(rule), rounded to three
//    significant digits (e.g. kl: 1e-06, 2.15e-06, 4.64e-06, ..., 0.1);
//  - argmax-stability (exit after τ stable checks, so larger is tighter): the counts
//    K, K-1, ..., 1 with K = min(kMaxStabilityCount, checks_per_token - 1) (a streak of
//    checks_per_token - 1 only completes at the last check, so K behaves as no early exit);
//    K >= 1 always;
//  - none: empty.
// `checks_per_token` is used by argmax-stability only (ChecksPerToken of the class; <= 0:
// kMaxStabilityCount + 1).
std::vector<double> CandidateThresholds(ExitRule rule, int checks_per_token);

}  // namespace ponder::policy
