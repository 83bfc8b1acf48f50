#pragma once

#include <cstdint>
#include <span>

namespace ponder::exec {

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy (argmax)
  double top_p = 1.0;        // nucleus: smallest set of tokens whose mass reaches top_p
};

// Picks a token from logits[0, vocab). `rng_state` is advanced (SplitMix64 stream), so
// the same seed gives the same choices whatever else runs.
int32_t Sample(std::span<const float> logits, const SamplingOptions& options, uint64_t& rng_state);

// Index of the largest value (first on ties).
int32_t Argmax(std::span<const float> values);

}  // namespace ponder::exec
