#include "policy/criteria.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <cmath>
#include <limits>

#include "policy/names.h"

namespace ponder::policy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct RuleInfo {
  ExitRule rule;
  const char* name;
  SignalKind signal;
  double threshold;
};

constexpr std::array<RuleInfo, 7> kRules = {{
    {ExitRule::kNone, "none", SignalKind::kNone, 0.0},
    {ExitRule::kKl, "kl", SignalKind::kLogits, 1e-3},
    {ExitRule::kMinpKl, "minp-kl", SignalKind::kLogits, 1e-5},
    {ExitRule::kEntropyDiff, "entropy-diff", SignalKind::kLogits, 1e-3},
    {ExitRule::kLatentDiff, "latent-diff", SignalKind::kLatent, 0.03},
    {ExitRule::kCosine, "cosine", SignalKind::kLatent, 1e-3},
    {ExitRule::kArgmaxStability, "argmax-stability", SignalKind::kLogits, 5.0},
}};

const RuleInfo& Info(ExitRule rule) {
  for (const RuleInfo& info : kRules) {
    if (info.rule == rule) return info;
  }
  return kRules[0];
}

}  // namespace

std::string_view ExitRuleName(ExitRule rule) { return Info(rule).name; }

const std::vector<std::string>& ExitRuleNames() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const RuleInfo& info : kRules) out.emplace_back(info.name);
    return out;
  }();
  return names;
}

Result<ExitRule> ParseExitRule(std::string_view name) {
  for (const RuleInfo& info : kRules) {
    if (name == info.name) return info.rule;
  }
  return InvalidArgument(
      WithSuggestion("unknown exit rule \"" + std::string(name) + "\"", name, ExitRuleNames()));
}

SignalKind RequiredSignal(ExitRule rule) { return Info(rule).signal; }

double DefaultThreshold(ExitRule rule) { return Info(rule).threshold; }

bool ThresholdSuits(ExitRule rule, double threshold) {
  if (!std::isfinite(threshold)) return false;
  if (rule == ExitRule::kArgmaxStability) {
    return threshold >= 1 && threshold == std::floor(threshold);
  }
  return threshold > 0;
}

std::vector<double> LogSoftmax(std::span<const float> logits) {
  std::vector<double> out(logits.size());
  if (logits.empty()) return out;
  double max = -kInf;
  for (float x : logits) max = std::max(max, static_cast<double>(x));
  double sum = 0.0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - max);
  const double log_norm = max + std::log(sum);
  for (size_t i = 0; i < logits.size(); ++i) out[i] = static_cast<double>(logits[i]) - log_norm;
  return out;
}

std::vector<double> UniformLogProbs(size_t vocab) {
  return std::vector<double>(vocab, -std::log(static_cast<double>(vocab)));
}

std::vector<double> MinpLogProbs(std::span<const float> logits, double min_p) {
  std::vector<double> out = LogSoftmax(logits);
  if (out.empty()) return out;
  const double fill = 1.0 / static_cast<double>(out.size());
  double max_prob = 0.0;
  for (double& v : out) {
    v = std::exp(v);  // now a probability
    max_prob = std::max(max_prob, v);
  }
  const double cut = min_p * max_prob;
  double sum = 0.0;
  for (double& p : out) {
    if (p < cut) p = fill;
    sum += p;
  }
  for (double& p : out) p = std::log(p / sum);
  return out;
}

double KlDivergence(std::span<const double> prev_log_probs, std::span<const double> cur_log_probs) {
  assert(prev_log_probs.size() == cur_log_probs.size());
  if (prev_log_probs.size() != cur_log_probs.size()) return kInf;
  double kl = 0.0;
  for (size_t i = 0; i < prev_log_probs.size(); ++i) {
    const double lp = prev_log_probs[i];
    if (lp == -kInf) continue;  // prev_i = 0 contributes nothing
    kl += std::exp(lp) * (lp - cur_log_probs[i]);
  }
  return kl;
}

double Entropy(std::span<const float> logits) {
  const std::vector<double> log_probs = LogSoftmax(logits);
  double entropy = 0.0;
  for (double lp : log_probs) {
    if (lp == -kInf) continue;
    entropy -= std::exp(lp) * lp;
  }
  return entropy;
}

int64_t Argmax(std::span<const float> logits) {
  if (logits.empty()) return -1;
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<int64_t>(best);
}

double LatentDiff(std::span<const float> prev, std::span<const float> cur) {
  assert(prev.size() == cur.size());
  if (prev.size() != cur.size()) return kInf;
  double diff = 0.0;
  double norm = 0.0;
  for (size_t i = 0; i < cur.size(); ++i) {
    const double d = static_cast<double>(cur[i]) - static_cast<double>(prev[i]);
    diff += d * d;
    norm += static_cast<double>(cur[i]) * static_cast<double>(cur[i]);
  }
  if (norm == 0.0) return kInf;
  return std::sqrt(diff) / std::sqrt(norm);
}

double CosineDistance(std::span<const float> prev, std::span<const float> cur) {
  assert(prev.size() == cur.size());
  if (prev.size() != cur.size()) return kInf;
  double dot = 0.0;
  double prev_norm = 0.0;
  double cur_norm = 0.0;
  for (size_t i = 0; i < cur.size(); ++i) {
    const double a = prev[i];
    const double b = cur[i];
    dot += a * b;
    prev_norm += a * a;
    cur_norm += b * b;
  }
  if (prev_norm == 0.0 || cur_norm == 0.0) return kInf;
  return 1.0 - dot / (std::sqrt(prev_norm) * std::sqrt(cur_norm));
}

CriterionState::CriterionState(ExitRule rule, double threshold)
    : rule_(rule),
      threshold_(rule == ExitRule::kArgmaxStability ? std::floor(threshold) : threshold),
      last_value_(std::numeric_limits<double>::quiet_NaN()) {}

void CriterionState::Reset() {
  converged_ = false;
  checks_ = 0;
  last_value_ = std::numeric_limits<double>::quiet_NaN();
  prev_argmax_ = -1;
  stable_checks_ = 0;
}

bool CriterionState::ObserveValue(double value) {
  assert(rule_ != ExitRule::kArgmaxStability);
  ++checks_;
  last_value_ = value;
  converged_ =
      rule_ != ExitRule::kNone && rule_ != ExitRule::kArgmaxStability && value < threshold_;
  return converged_;
}

bool CriterionState::ObserveArgmax(int64_t token) {
  assert(rule_ == ExitRule::kArgmaxStability);
  ++checks_;
  stable_checks_ = (token == prev_argmax_) ? stable_checks_ + 1 : 0;
  prev_argmax_ = token;
  last_value_ = stable_checks_;
  converged_ = rule_ == ExitRule::kArgmaxStability && stable_checks_ >= threshold_;
  return converged_;
}

void SignalTracker::Begin(std::span<const float> initial_latent) {
  prev_log_probs_.clear();
  prev_entropy_ = kInitialEntropy;
  prev_latent_.assign(initial_latent.begin(), initial_latent.end());
}

double SignalTracker::ObserveLogits(ExitRule rule, std::span<const float> logits) {
  switch (rule) {
    case ExitRule::kKl:
    case ExitRule::kMinpKl: {
      std::vector<double> cur = rule == ExitRule::kKl ? LogSoftmax(logits) : MinpLogProbs(logits);
      if (prev_log_probs_.empty()) prev_log_probs_ = UniformLogProbs(cur.size());
      const double kl = KlDivergence(prev_log_probs_, cur);
      prev_log_probs_ = std::move(cur);
      return kl;
    }
    case ExitRule::kEntropyDiff: {
      const double entropy = Entropy(logits);
      const double diff = std::abs(entropy - prev_entropy_);
      prev_entropy_ = entropy;
      return diff;
    }
    case ExitRule::kArgmaxStability:
      return static_cast<double>(Argmax(logits));
    default:
      assert(false && "ObserveLogits: not a logit rule");
      return std::numeric_limits<double>::quiet_NaN();
  }
}

SignalTracker::LatentSignals SignalTracker::ObserveLatent(std::span<const float> latent) {
  LatentSignals out{kInf, kInf};
  if (prev_latent_.size() == latent.size()) {
    out.latent_diff = LatentDiff(prev_latent_, latent);
    out.cosine = CosineDistance(prev_latent_, latent);
  }
  prev_latent_.assign(latent.begin(), latent.end());
  return out;
}

}  // namespace ponder::policy
