#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
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

// Where KV pages live: host memory (the default) or a device's, through the backend that
// reads them. Page contents are only ever touched by that backend.
class PageMemory {
 public:
  virtual ~PageMemory() = default;
  virtual float* Allocate(size_t floats) = 0;
  virtual void Free(float* page) = 0;
};

// Fixed-size pages of keys and values: kPageRows positions of one cache slot, laid out
// [2, kPageRows, width] f32 (the keys' rows, then the values'). A pool hands pages out and
// takes them back; pages are reused and never returned to the system, so a serving
// process's KV memory stays flat. Bytes are counted exactly: a sequence holds whole pages.
// Thread-safe.
class KvPagePool {
 public:
  static constexpr int64_t kPageRows = 16;

  // `memory`: where pages are allocated (null: host memory); it must outlive the pool.
  explicit KvPagePool(int64_t width, PageMemory* memory = nullptr);
  ~KvPagePool();
  KvPagePool(const KvPagePool&) = delete;
  KvPagePool& operator=(const KvPagePool&) = delete;

  int64_t width() const { return width_; }
  uint64_t page_bytes() const {
    return 2u * static_cast<uint64_t>(kPageRows * width_) * sizeof(float);
  }
  float* Take();
  void Give(float* page);
  uint64_t bytes_in_use() const;     // pages handed out
  uint64_t bytes_allocated() const;  // pages in use or free for reuse

 private:
  int64_t width_;
  PageMemory* memory_;
  mutable std::mutex mu_;
  std::vector<float*> free_;
  std::vector<float*> pages_;  // every page allocated, in use or free
};

// Keys and values of one cache slot for one sequence: a page table over a KvPagePool.
// Row `pos` (width floats) lives in page pos / kPageRows. Move-only; its pages go back to
// the pool when it is destroyed or truncated.
class KvSlot {
 public:
  KvSlot() = default;
  explicit KvSlot(KvPagePool* pool) : pool_(pool), width_(pool->width()) {}
  KvSlot(KvSlot&& o) noexcept;
  KvSlot& operator=(KvSlot&& o) noexcept;
  ~KvSlot() { Release(0); }

  float* K(int64_t pos) { return Row(pos, 0); }
  float* V(int64_t pos) { return Row(pos, KvPagePool::kPageRows); }
  const float* K(int64_t pos) const { return Row(pos, 0); }
  const float* V(int64_t pos) const { return Row(pos, KvPagePool::kPageRows); }
  int64_t capacity() const { return static_cast<int64_t>(pages_.size()) * KvPagePool::kPageRows; }
  uint64_t bytes() const { return pool_ ? pages_.size() * pool_->page_bytes() : 0; }

  // Makes room for positions [0, end): takes pages from the pool.
  void Reserve(int64_t end);
  // Gives back the pages holding no position < rows.
  void Release(int64_t rows);
  // Makes room for positions [0, end) and counts them written (a call writes their rows).
  void Extend(int64_t end) {
    Reserve(end);
    length = std::max(length, end);
  }

  int64_t length = 0;  // positions [0, length) are written

 private:
  float* Row(int64_t pos, int64_t half) const {
    return pages_[pos / KvPagePool::kPageRows] + (half + pos % KvPagePool::kPageRows) * width_;
  }
  KvPagePool* pool_ = nullptr;
  int64_t width_ = 0;
  std::vector<float*> pages_;
};

// The cache of one sequence: prelude slots, core slots (per strategy), coda slots, their
// pages from `pool` (shared by the sequences of a batcher), or from a pool of its own when
// `pool` is null. Not thread-safe; a sequence is advanced by one caller at a time.
class SequenceCache {
 public:
  // `memory` is where a pool of its own allocates (when `pool` is null).
  SequenceCache(int64_t n_prelude, int64_t n_core, int64_t n_coda, int64_t width,
                KvStrategy strategy, KvPagePool* pool = nullptr, PageMemory* memory = nullptr);

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
  // Whether a position before `end` stopped iterating before `iteration`: attention at that
  // iteration then reads such positions through CoreRead.
  bool HasGap(int64_t end, int64_t iteration) const { return end > 0 && MinDepth(end) < iteration; }
  // The slot attention at core `iteration` of `layer` reads an earlier position p from: p's
  // own slot at that iteration, or its last iteration's when p stopped sooner.
  KvSlot& CoreRead(int64_t iteration, int64_t layer, int64_t p) {
    return Core(std::min(iteration, depth(p)), layer);
  }

  // Tokens whose whole forward pass (through the coda) is cached.
  int64_t tokens() const { return tokens_; }
  void set_tokens(int64_t n) { tokens_ = n; }
  int64_t width() const { return width_; }
  const KvStrategy& strategy() const { return strategy_; }
  // Bytes held by keys and values: the pages of every slot.
  uint64_t bytes() const;
  // Drops every position >= n in every slot (used to roll back or reset); pages that hold
  // no remaining position go back to the pool.
  void Truncate(int64_t n);

 private:
  int64_t n_core_;
  int64_t width_;
  KvStrategy strategy_;
  std::unique_ptr<KvPagePool> own_pool_;  // declared before the slots: destroyed after them
  KvPagePool* pool_;
  std::vector<KvSlot> prelude_, core_, coda_;
  std::vector<int32_t> depth_;
  int64_t tokens_ = 0;
};

// The most bytes a SequenceCache can hold for `positions` tokens run to at most
// `max_iterations` (every slot with the pages of `positions` rows): what admission reserves
// for a request, exactly what the cache holds when it runs that deep.
uint64_t MaxSequenceBytes(int64_t n_prelude, int64_t n_core, int64_t n_coda, int64_t width,
                          const KvStrategy& strategy, int64_t max_iterations, int64_t positions);

}  // namespace ponder::exec
