#pragma once

// Exit criteria of recurrent-depth decoding: the per-check signals of the Huginn reference
// (`recpre/raven_modeling_minimal.py`, the `*ExitEvaluator` classes) as pure functions, and the
// small per-token state that turns a stream of signals into "converged".
//
// Conventions (as in the reference):
//  - p_t is the softmax of the last-position logits after iteration t; s_t the latent state.
//  - "previous" means the previous *check* of the same token, not the previous iteration;
//    before the first check p_0 is uniform over the vocabulary, H_0 = 100, and s_0 is the
//    initial (random or warm-started) state.
//  - Everything is computed in double; softmax goes through log-softmax (max subtracted).
//  - NaN signals compare false, so a NaN never converges.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace ponder::policy {

enum class ExitRule {
  kNone,             // never exits early: every token runs max_steps
  kKl,               // KL(p_prev || p_t) < threshold
  kMinpKl,           // the same after min-p filtering of both distributions
  kEntropyDiff,      // |H(p_t) - H(p_prev)| < threshold
  kLatentDiff,       // ||s_t - s_prev|| / ||s_t|| < threshold
  kCosine,           // 1 - cos(s_t, s_prev) < threshold
  kArgmaxStability,  // argmax unchanged for >= threshold consecutive checks
};

// What a check of a rule needs from the backend. A logit check runs coda + head (it costs
// about one extra pass of those layers); a latent check reads the state it already has.
enum class SignalKind { kNone, kLogits, kLatent };

// "kl", "minp-kl", "entropy-diff", "latent-diff", "cosine", "argmax-stability", "none".
std::string_view ExitRuleName(ExitRule rule);
// The inverse of ExitRuleName; an unknown name is kInvalidArgument naming the nearest rule.
[[nodiscard]] Result<ExitRule> ParseExitRule(std::string_view name);
// Every rule name, in declaration order (for messages and docs).
const std::vector<std::string>& ExitRuleNames();

SignalKind RequiredSignal(ExitRule rule);

// The reference's current "auto" thresholds (huginn.md §5): kl 1e-3, minp-kl 1e-5,
// entropy-diff 1e-3, latent-diff 0.03, cosine 1e-3, argmax-stability 5 (checks), none 0.
double DefaultThreshold(ExitRule rule);

// Whether `threshold` suits `rule`: finite, and a whole number of checks >= 1 for
// argmax-stability, > 0 for the others.
bool ThresholdSuits(ExitRule rule, double threshold);

// ---- Pure signal functions. Rows are one token's values: logits [vocab], latents [hidden].
// Rows given together must have the same length (a mismatch is a programmer error: asserts,
// and returns +infinity in release builds so that nothing converges on it).

// log softmax(logits), in double. [vocab]
std::vector<double> LogSoftmax(std::span<const float> logits);
// log of the uniform distribution over `vocab` entries: every entry -log(vocab). [vocab]
std::vector<double> UniformLogProbs(size_t vocab);
// The reference's min-p cut of minp-kl, and the entropy an entropy-diff check is taken
// against before a token's first (the reference's start value).
inline constexpr double kMinP = 0.1;
inline constexpr double kInitialEntropy = 100.0;

// The reference's min-p view of a distribution: probabilities below min_p * max(p) are set
// to 1/V (V = logits.size()), then the whole row is renormalised; returns the log. [vocab]
std::vector<double> MinpLogProbs(std::span<const float> logits, double min_p = kMinP);
// KL(prev || cur) = sum_i prev_i (log prev_i - log cur_i), from log-probabilities. Terms with
// prev_i == 0 contribute 0.
double KlDivergence(std::span<const double> prev_log_probs, std::span<const double> cur_log_probs);
// Shannon entropy -sum p log p of softmax(logits), in nats. The reference adds 1e-10 inside
// the log; this is the exact value (they differ by at most vocab * 1e-10).
double Entropy(std::span<const float> logits);
// Index of the largest logit (the first one on ties, as torch.argmax); -1 for an empty row.
int64_t Argmax(std::span<const float> logits);
// ||cur - prev|| / ||cur||; +infinity when ||cur|| == 0 (undefined, so never converged).
double LatentDiff(std::span<const float> prev, std::span<const float> cur);
// 1 - cos(cur, prev); +infinity when either norm is 0.
double CosineDistance(std::span<const float> prev, std::span<const float> cur);

// Per-(sequence, token) convergence state of one rule: feed it the signal at each check.
// Not thread-safe; one per sequence, reset at every new token.
class CriterionState {
 public:
  // `threshold` is used as given (argmax-stability: a count of checks, rounded down).
  CriterionState(ExitRule rule, double threshold);

  // Back to the state before the first check of a token.
  void Reset();

  // One check of a value rule (kl, minp-kl, entropy-diff, latent-diff, cosine): true when
  // value < threshold. For none it is always false. Must not be used for argmax-stability.
  bool ObserveValue(double value);
  // One check of argmax-stability: the argmax token of this check. True once the argmax
  // has equalled the previous check's for >= threshold consecutive checks.
  bool ObserveArgmax(int64_t token);

  ExitRule rule() const { return rule_; }
  double threshold() const { return threshold_; }
  bool converged() const { return converged_; }
  int checks() const { return checks_; }
  // The last value observed (argmax-stability: the current streak); NaN before any.
  double last_value() const { return last_value_; }
  int stable_checks() const { return stable_checks_; }

 private:
  ExitRule rule_;
  double threshold_;
  bool converged_ = false;
  int checks_ = 0;
  double last_value_;
  int64_t prev_argmax_ = -1;
  int stable_checks_ = 0;
};

// Keeps what the signals of one token need from its previous check (previous log-probs,
// entropy and latent row) and computes them from raw rows. For backends that compute the
// signals themselves (on a device) CriterionState alone is enough. Not thread-safe.
class SignalTracker {
 public:
  // Starts a token. `initial_latent` is s_0 (may be empty when no latent rule is used);
  // the vocabulary size is taken from the first logits row.
  void Begin(std::span<const float> initial_latent);

  // The value of a logit rule (kl, minp-kl, entropy-diff) at this check, against the
  // previous logit check of the token (or p_0 / H_0), and remembers this one.
  // For argmax-stability returns the argmax as a double. [vocab]
  double ObserveLogits(ExitRule rule, std::span<const float> logits);

  struct LatentSignals {
    double latent_diff;
    double cosine;
  };
  // Both latent signals against the previous latent observation (or s_0). [hidden]
  LatentSignals ObserveLatent(std::span<const float> latent);

 private:
  std::vector<double> prev_log_probs_;  // empty: uniform, materialised on first use
  double prev_entropy_ = kInitialEntropy;
  std::vector<float> prev_latent_;
};

}  // namespace ponder::policy
