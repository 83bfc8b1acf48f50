#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "exec/cpu/cpu_model.h"
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
};

struct AdaptiveResult {
  std::vector<TokenTrace> tokens;
  int64_t prompt_steps = 0;  // iterations of the prefill (all prompt rows together)
  policy::CheckCounts checks;
  std::string finish_reason;  // "stop" or "length"
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
    cpu::CpuModel& model, std::span<const int32_t> prompt, const policy::DepthPlan& plan,
    const AdaptiveOptions& options, double (*now)() = nullptr,
    const std::function<void(int32_t)>& on_token = {});

}  // namespace ponder::exec
