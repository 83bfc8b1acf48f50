#include "exec/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace ponder::exec {

int32_t Argmax(std::span<const float> values) {
  return static_cast<int32_t>(std::max_element(values.begin(), values.end()) - values.begin());
}

int32_t Sample(std::span<const float> logits, const SamplingOptions& options, uint64_t& rng_state) {
  if (options.temperature <= 0.0 || logits.size() <= 1) return Argmax(logits);
  const float mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double sum = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    p[i] = std::exp((static_cast<double>(logits[i]) - mx) / options.temperature);
    sum += p[i];
  }
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  // Keep the smallest prefix whose mass reaches top_p (at least one token).
  size_t keep = order.size();
  if (options.top_p < 1.0) {
    double acc = 0.0;
    for (size_t i = 0; i < order.size(); ++i) {
      acc += p[order[i]] / sum;
      if (acc >= options.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0.0;
  for (size_t i = 0; i < keep; ++i) kept += p[order[i]];
  // SplitMix64 step -> uniform in [0, 1).
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  const double u = static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0) * kept;
  double acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += p[order[i]];
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

}  // namespace ponder::exec
