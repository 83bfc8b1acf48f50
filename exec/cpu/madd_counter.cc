#include "exec/cpu/madd_counter.h"

namespace ponder::exec::cpu {

void ResetMaddCounter(bool enabled) {
  internal::madd_counting.store(false, std::memory_order_relaxed);
  internal::madd_linear.store(0, std::memory_order_relaxed);
  internal::madd_attention.store(0, std::memory_order_relaxed);
  internal::madd_counting.store(enabled, std::memory_order_relaxed);
}

MaddCounts ReadMaddCounter() {
  MaddCounts c;
  c.linear = internal::madd_linear.load(std::memory_order_relaxed);
  c.attention = internal::madd_attention.load(std::memory_order_relaxed);
  return c;
}

}  // namespace ponder::exec::cpu
