#include "policy/calibration.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>

namespace ponder::policy {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// log C(n, i) + i log p + (n - i) log(1 - p), for 0 < p < 1.
double LogBinomialTerm(int64_t i, int64_t n, double log_p, double log_q) {
  const double dn = static_cast<double>(n), di = static_cast<double>(i);
  return std::lgamma(dn + 1.0) - std::lgamma(di + 1.0) - std::lgamma(dn - di + 1.0) + di * log_p +
         (dn - di) * log_q;
}

// `value` rounded to three significant digits (grids print as 2.15e-04, not 2.1544e-04).
double ThreeDigits(double value) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2e", value);
  return std::strtod(buf, nullptr);
}

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

}  // namespace

double LogBinomialCdf(int64_t k, int64_t n, double p) {
  if (n < 0 || !(p >= 0.0 && p <= 1.0)) return std::numeric_limits<double>::quiet_NaN();
  if (k < 0) return kNegInf;
  if (k >= n) return 0.0;
  if (p == 0.0) return 0.0;      // X == 0 <= k
  if (p == 1.0) return kNegInf;  // X == n > k
  const double log_p = std::log(p), log_q = std::log1p(-p);
  // Terms of the lower tail; log-sum-exp around the largest one.
  std::vector<double> terms;
  terms.reserve(static_cast<size_t>(k) + 1);
  double top = kNegInf;
  for (int64_t i = 0; i <= k; ++i) {
    terms.push_back(LogBinomialTerm(i, n, log_p, log_q));
    top = std::max(top, terms.back());
  }
  double sum = 0.0;
  for (double t : terms) sum += std::exp(t - top);
  return std::min(0.0, top + std::log(sum));
}

double BinomialCdf(int64_t k, int64_t n, double p) { return std::exp(LogBinomialCdf(k, n, p)); }

double DisagreementPValue(int64_t disagreements, int64_t n, double epsilon) {
  if (n <= 0) return 1.0;
  return BinomialCdf(disagreements, n, epsilon);
}

int64_t MaxRejectableDisagreements(int64_t n, double epsilon, double delta) {
  if (n <= 0) return -1;
  // The CDF grows with k: walk up while it stays <= delta (k is small where it matters).
  int64_t k = -1;
  while (k + 1 < n && DisagreementPValue(k + 1, n, epsilon) <= delta) ++k;
  return k;
}

int64_t MinTokensForGuarantee(double epsilon, double delta) {
  if (!(epsilon > 0.0 && epsilon < 1.0 && delta > 0.0 && delta < 1.0)) return -1;
  int64_t n = static_cast<int64_t>(std::ceil(std::log(delta) / std::log1p(-epsilon)));
  // Guard the rounding of the ratio: the smallest n with (1 - ε)^n <= δ.
  while (n > 1 && DisagreementPValue(0, n - 1, epsilon) <= delta) --n;
  while (DisagreementPValue(0, n, epsilon) > delta) ++n;
  return n;
}

Status ValidateTarget(const CalibrationTarget& target) {
  if (!(target.target_agreement > 0.0 && target.target_agreement < 1.0)) {
    return InvalidArgument("target agreement must be in (0, 1) (got " +
                           Num(target.target_agreement) + ")");
  }
  if (!(target.delta > 0.0 && target.delta < 1.0)) {
    return InvalidArgument("delta must be in (0, 1) (got " + Num(target.delta) + ")");
  }
  return Status::Ok();
}

CandidateTest TestCandidate(const CandidateCount& count, const CalibrationTarget& target) {
  CandidateTest test;
  test.count = count;
  test.p_value = DisagreementPValue(count.total - count.agree, count.total, target.epsilon());
  test.rejected = count.total > 0 && test.p_value <= target.delta;
  return test;
}

Result<FixedSequenceResult> FixedSequenceTest(const std::vector<CandidateCount>& candidates,
                                              const CalibrationTarget& target) {
  PONDER_RETURN_IF_ERROR(ValidateTarget(target));
  FixedSequenceResult result;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const CandidateCount& c = candidates[i];
    if (c.total < 0 || c.agree < 0 || c.agree > c.total) {
      return InvalidArgument("candidate " + std::to_string(i) + " (threshold " + Num(c.threshold) +
                             "): counts must satisfy 0 <= agree <= total (" +
                             std::to_string(c.agree) + " of " + std::to_string(c.total) + ")");
    }
  }
  for (size_t i = 0; i < candidates.size(); ++i) {
    result.tested.push_back(TestCandidate(candidates[i], target));
    if (!result.tested.back().rejected) break;
    result.chosen = static_cast<int>(i);
  }
  return result;
}

int ChecksPerToken(const TaskClass& task_class) {
  if (task_class.exit.rule == ExitRule::kNone) return 0;
  const int every = std::max(1, task_class.exit.check_every);
  const int from = task_class.exit.check_from;
  int first = std::max(from, task_class.min_steps);
  first += (every - (first - from) % every) % every;  // align on the cadence
  if (first > task_class.max_steps) return 0;
  return (task_class.max_steps - first) / every + 1;
}

std::vector<double> CandidateThresholds(ExitRule rule, int checks_per_token) {
  std::vector<double> out;
  switch (rule) {
    case ExitRule::kNone:
      return out;
    case ExitRule::kArgmaxStability: {
      const int checks = checks_per_token > 0 ? checks_per_token : kMaxStabilityCount + 1;
      const int top = std::max(1, std::min(kMaxStabilityCount, checks - 1));
      for (int k = top; k >= 1; --k) out.push_back(k);
      return out;
    }
    default:
      break;
  }
  const double d = DefaultThreshold(rule);
  for (int k = -kGridDecadesBelow * kGridPerDecade; k <= kGridDecadesAbove * kGridPerDecade; ++k) {
    out.push_back(ThreeDigits(d * std::pow(10.0, static_cast<double>(k) / kGridPerDecade)));
  }
  return out;
}

}  // namespace ponder::policy
