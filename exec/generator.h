#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "exec/adaptive.h"
#include "exec/backend.h"
#include "exec/kv_cache.h"
#include "exec/sampling.h"

namespace ponder::exec {

struct GenerateOptions {
  int64_t steps = 32;             // core iterations per token (fixed depth)
  int64_t max_tokens = 32;        // new tokens at most
  SamplingOptions sampling;       // greedy by default
  uint64_t seed = 0;              // initial states and sampling
  double init_scale = 1.0;        // scales the random initial state; 0 = zero state
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
  KvStrategy kv;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (including a final stop id, if any)
  std::string finish_reason;    // "stop" or "length"
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // all tokens after the first
  uint64_t kv_bytes = 0;        // cache size at the end
};

// The sampling, seed, stop and cache options of `options` for the adaptive loop.
AdaptiveOptions ToAdaptiveOptions(const GenerateOptions& options);

// Fixed-depth generation of one sequence: prefill the prompt at `steps` iterations,
// then one token at a time. `on_token` (may be empty) sees each new id as it is chosen.
[[nodiscard]] Result<GenerateResult> Generate(Backend& model, std::span<const int32_t> prompt,
                                              const GenerateOptions& options,
                                              const std::function<void(int32_t)>& on_token = {});

// Fixed-depth generation of several sequences together on a DepthBatcher: every tick runs
// one core iteration for all unfinished sequences. Sequence b gets exactly what Generate
// with seed options.seed + b gives, whatever its neighbours.
[[nodiscard]] Result<std::vector<GenerateResult>> GenerateBatch(
    Backend& model, const std::vector<std::vector<int32_t>>& prompts,
    const GenerateOptions& options);

}  // namespace ponder::exec
