#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace ponder::exec {

// How core iterations map onto cache slots (reference/huginn.md §4). A core slot is
// addressed by the 0-based "core step index" c = n_core * (iteration - 1) + layer.
struct KvStrategy {
  enum class Kind { kFull, kCompressS };
  Kind kind = Kind::kFull;
  int64_t ring = 0;  // N of compress-sN: core slot = c mod N

  // "full" or "compress-sN" (N >= 1).
  [[nodiscard]] static Result<KvStrategy> Parse(const std::string& text);
  std::string Name() const;
  // Core slot of core step index c.
  int64_t CoreSlot(int64_t c) const { return kind == Kind::kFull ? c : c % ring; }
  // Number of core slots needed for `iterations` iterations of an n_core-layer block.
  int64_t CoreSlots(int64_t iterations, int64_t n_core) const;
};

// Keys and values of one cache slot for one sequence: rows are token positions,
// [capacity, width] f32 each (width = n_heads * head_dim).
struct KvSlot {
  std::vector<float> k, v;
  int64_t length = 0;  // positions [0, length) are written
};

// The cache of one sequence: prelude slots, core slots (per strategy), coda slots.
// Not thread-safe; a sequence is advanced by one caller at a time.
class SequenceCache {
 public:
  SequenceCache(int64_t n_prelude, int64_t n_core, int64_t n_coda, int64_t width,
                KvStrategy strategy);

  // Slot of a prelude layer, a core (iteration >= 1, layer) pair, or a coda layer.
  KvSlot& Prelude(int64_t layer) { return prelude_[layer]; }
  KvSlot& Core(int64_t iteration, int64_t layer);
  KvSlot& Coda(int64_t layer) { return coda_[layer]; }

  // Core iterations the token at `pos` has run (its last written core iteration); 0 for
  // a position no core iteration has reached. Tokens that exited early have fewer
  // iterations than later ones: attention at iteration i reads such a token's keys from
  // its iteration min(i, depth) of the same layer (the reference's `latest-m4` lookup,
  // for any core-block size).
  int64_t depth(int64_t pos) const {
    return pos < static_cast<int64_t>(depth_.size()) ? depth_[pos] : 0;
  }
  void SetDepth(int64_t pos, int64_t count, int64_t iterations);
  // Smallest depth over positions [0, end).
  int64_t MinDepth(int64_t end) const;

  // Tokens whose whole forward pass (through the coda) is cached.
  int64_t tokens() const { return tokens_; }
  void set_tokens(int64_t n) { tokens_ = n; }
  int64_t width() const { return width_; }
  const KvStrategy& strategy() const { return strategy_; }
  // Bytes held by keys and values (allocated capacity).
  uint64_t bytes() const;
  // Drops every position >= n in every slot (used to roll back or reset).
  void Truncate(int64_t n);

 private:
  int64_t n_core_;
  int64_t width_;
  KvStrategy strategy_;
  std::vector<KvSlot> prelude_, core_, coda_;
  std::vector<int32_t> depth_;
  int64_t tokens_ = 0;
};

// Makes room for positions [0, end) in a slot, growing geometrically.
void EnsureCapacity(KvSlot& slot, int64_t end, int64_t width);

// The most bytes a SequenceCache can hold for `positions` tokens run to at most
// `max_iterations` (every slot grown by EnsureCapacity to its largest capacity for them):
// what admission reserves for a request.
uint64_t MaxSequenceBytes(int64_t n_prelude, int64_t n_core, int64_t n_coda, int64_t width,
                          const KvStrategy& strategy, int64_t max_iterations, int64_t positions);

}  // namespace ponder::exec
