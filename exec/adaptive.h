#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "exec/backend.h"
#include "exec/kv_cache.h"
#include "exec/sampling.h"
#include "policy/exit_controller.h"
#include "policy/plan.h"

namespace ponder::exec {

struct AdaptiveOptions {
  int64_t max_tokens = 32;
  uint64_t seed = 0;
  double init_scale = 1.0;
  SamplingOptions sampling;
  std::vector<int32_t> stop_ids;
  KvStrategy kv;
};

// Seconds on the steady clock GenerateAdaptive uses by default; plan requests with
// PlanContext::now = MonotonicSeconds() so that their deadlines share this clock.
double MonotonicSeconds();

// What one generated token cost and why it stopped iterating.
struct TokenTrace {
  int32_t token = 0;
  int64_t steps = 0;  // core iterations spent on it
  policy::ExitReason reason = policy::ExitReason::kNone;
  // The exit checks it ran (a gated logit check counts a latent check, plus a logit check
  // when the gate opened), and whether its output logits came from its last check's coda +
  // head pass (otherwise one more such pass produced them).
  int32_t latent_checks = 0;
  int32_t logit_checks = 0;
  bool logits_from_check = false;
};

// One chunk of a prompt prefilled in several passes (DepthBatcher::set_prefill_chunk): its
// rows, the iterations it ran, and its checks. The last chunk's pass produced tokens[0].
struct PrefillChunk {
  int64_t rows = 0;
  int64_t steps = 0;
  int32_t latent_checks = 0;
  int32_t logit_checks = 0;
  bool logits_from_check = false;
};

struct AdaptiveResult {
  std::vector<TokenTrace> tokens;
  int64_t prompt_steps = 0;  // iterations of the prefill (all prompt rows together)
  // The prompt's chunks before the last, when the prompt was prefilled in chunks (empty
  // otherwise); tokens[0] is the last chunk's pass.
  std::vector<PrefillChunk> prefill_chunks;
  policy::CheckCounts checks;
  // "stop" (a stop id), "length" (max_tokens or the context) or "deadline" (a token exited
  // on the plan's deadline: the sequence ends with what it has).
  std::string finish_reason;
  uint64_t kv_bytes = 0;
  double prefill_seconds = 0.0;  // the first token (prompt rows)
  double decode_seconds = 0.0;   // all tokens after the first
};

// Generation of one sequence with per-token exits decided by an ExitController on
// `plan`: after each core iteration the controller says whether a check is due and which
// signals it needs (latent change: free; logit rules: one coda + head pass), and whether
// to stop. The prompt's rows iterate together and exit on the last row's signals (as the
// reference's prefill). Later tokens read the keys of earlier tokens that stopped sooner
// from those tokens' last iteration of the same layer. With warm_start, each token's
// initial state is the previous token's final state. `now` gives seconds on the plan's
// clock (for deadlines).
[[nodiscard]] Result<AdaptiveResult> GenerateAdaptive(
    Backend& model, std::span<const int32_t> prompt, const policy::DepthPlan& plan,
    const AdaptiveOptions& options, double (*now)() = nullptr,
    const std::function<void(int32_t)>& on_token = {});

}  // namespace ponder::exec
