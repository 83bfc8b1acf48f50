#pragma once

// Instrumentation for tests and benchmarks: the multiply-adds the CPU forward pass does in
// its matrix products (Linear / LinearRows) and in attention (q.k scores and the weighted
// sum of v, counted over the keys each query row sees: the causal part; the prefill GEMM
// also multiplies the masked upper triangle, which is not counted). Off by default: a
// kernel then pays one relaxed atomic load per call. Counts are process-wide and
// thread-safe; enable it only while one forward pass of interest runs.

#include <atomic>
#include <cstdint>

namespace ponder::exec::cpu {

struct MaddCounts {
  int64_t linear = 0;     // x . w^T products: n x rows x in per call
  int64_t attention = 0;  // 2 x (visible keys) x head_dim per query row and head
  int64_t total() const { return linear + attention; }
};

namespace internal {
inline std::atomic<bool> madd_counting{false};
inline std::atomic<int64_t> madd_linear{0};
inline std::atomic<int64_t> madd_attention{0};
}  // namespace internal

inline bool MaddCounterEnabled() { return internal::madd_counting.load(std::memory_order_relaxed); }
inline void CountLinearMadds(int64_t n) {
  internal::madd_linear.fetch_add(n, std::memory_order_relaxed);
}
inline void CountAttentionMadds(int64_t n) {
  internal::madd_attention.fetch_add(n, std::memory_order_relaxed);
}

// Zeroes the counts and turns counting on or off.
void ResetMaddCounter(bool enabled);
MaddCounts ReadMaddCounter();

// Enables and zeroes the counter for its lifetime; disables it at the end.
class ScopedMaddCounter {
 public:
  ScopedMaddCounter() { ResetMaddCounter(true); }
  ~ScopedMaddCounter() { ResetMaddCounter(false); }
  ScopedMaddCounter(const ScopedMaddCounter&) = delete;
  ScopedMaddCounter& operator=(const ScopedMaddCounter&) = delete;
  MaddCounts Read() const { return ReadMaddCounter(); }
};

}  // namespace ponder::exec::cpu
