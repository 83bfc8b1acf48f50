#include "exec/kv_cache.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>

namespace ponder::exec {

Result<KvStrategy> KvStrategy::Parse(const std::string& text) {
  KvStrategy s;
  if (text == "full") return s;
  const std::string prefix = "compress-s";
  if (text.rfind(prefix, 0) == 0 && text.size() > prefix.size()) {
    const std::string digits = text.substr(prefix.size());
    if (digits.size() <= 6 && std::all_of(digits.begin(), digits.end(), ::isdigit)) {
      s.kind = Kind::kCompressS;
      s.ring = std::atoll(digits.c_str());
      if (s.ring >= 1) return s;
    }
  }
  return InvalidArgument("unknown KV-cache strategy \"" + text +
                         "\" (expected \"full\" or \"compress-sN\" with N >= 1)");
}

std::string KvStrategy::Name() const {
  return kind == Kind::kFull ? "full" : "compress-s" + std::to_string(ring);
}

int64_t KvStrategy::CoreSlots(int64_t iterations, int64_t n_core) const {
  const int64_t steps = iterations * n_core;
  return kind == Kind::kFull ? steps : std::min(steps, ring);
}

KvPagePool::KvPagePool(int64_t width, PageMemory* memory) : width_(width), memory_(memory) {}

KvPagePool::~KvPagePool() {
  for (float* page : pages_) {
    if (memory_ != nullptr) {
      memory_->Free(page);
    } else {
      delete[] page;
    }
  }
}

float* KvPagePool::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!free_.empty()) {
    float* page = free_.back();
    free_.pop_back();
    return page;
  }
  const auto floats = static_cast<size_t>(2 * kPageRows * width_);
  pages_.push_back(memory_ != nullptr ? memory_->Allocate(floats) : new float[floats]);
  return pages_.back();
}

void KvPagePool::Give(float* page) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(page);
}

uint64_t KvPagePool::bytes_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return (pages_.size() - free_.size()) * page_bytes();
}

uint64_t KvPagePool::bytes_allocated() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pages_.size() * page_bytes();
}

KvSlot::KvSlot(KvSlot&& o) noexcept
    : length(o.length), pool_(o.pool_), width_(o.width_), pages_(std::move(o.pages_)) {
  o.pages_.clear();
  o.length = 0;
}

KvSlot& KvSlot::operator=(KvSlot&& o) noexcept {
  if (this != &o) {
    Release(0);
    pool_ = o.pool_;
    width_ = o.width_;
    pages_ = std::move(o.pages_);
    length = o.length;
    o.pages_.clear();
    o.length = 0;
  }
  return *this;
}

void KvSlot::Reserve(int64_t end) {
  while (capacity() < end) pages_.push_back(pool_->Take());
}

void KvSlot::Release(int64_t rows) {
  const size_t keep =
      static_cast<size_t>((rows + KvPagePool::kPageRows - 1) / KvPagePool::kPageRows);
  while (pages_.size() > keep) {
    pool_->Give(pages_.back());
    pages_.pop_back();
  }
  length = std::min(length, rows);
}

SequenceCache::SequenceCache(int64_t n_prelude, int64_t n_core, int64_t n_coda, int64_t width,
                             KvStrategy strategy, KvPagePool* pool, PageMemory* memory)
    : n_core_(n_core), width_(width), strategy_(strategy) {
  if (pool == nullptr) own_pool_ = std::make_unique<KvPagePool>(width, memory);
  pool_ = pool != nullptr ? pool : own_pool_.get();
  for (int64_t i = 0; i < n_prelude; ++i) prelude_.emplace_back(pool_);
  for (int64_t i = 0; i < n_coda; ++i) coda_.emplace_back(pool_);
}

KvSlot& SequenceCache::Core(int64_t iteration, int64_t layer) {
  const int64_t slot = strategy_.CoreSlot(n_core_ * (iteration - 1) + layer);
  while (static_cast<int64_t>(core_.size()) <= slot) core_.emplace_back(pool_);
  return core_[slot];
}

void SequenceCache::SetDepth(int64_t pos, int64_t count, int64_t iterations) {
  if (static_cast<int64_t>(depth_.size()) < pos + count) depth_.resize(pos + count, 0);
  std::fill(depth_.begin() + pos, depth_.begin() + pos + count, static_cast<int32_t>(iterations));
}

int64_t SequenceCache::MinDepth(int64_t end) const {
  int64_t m = INT64_MAX;
  for (int64_t p = 0; p < end; ++p) m = std::min<int64_t>(m, depth(p));
  return end > 0 ? m : 0;
}

uint64_t SequenceCache::bytes() const {
  uint64_t n = 0;
  for (const auto* group : {&prelude_, &core_, &coda_}) {
    for (const KvSlot& s : *group) n += s.bytes();
  }
  return n;
}

void SequenceCache::Truncate(int64_t n) {
  for (auto* group : {&prelude_, &core_, &coda_}) {
    for (KvSlot& s : *group) s.Release(n);
  }
  tokens_ = std::min(tokens_, n);
  if (static_cast<int64_t>(depth_.size()) > n) depth_.resize(n);
}

uint64_t MaxSequenceBytes(int64_t n_prelude, int64_t n_core, int64_t n_coda, int64_t width,
                          const KvStrategy& strategy, int64_t max_iterations, int64_t positions) {
  const int64_t slots = n_prelude + n_coda + strategy.CoreSlots(max_iterations, n_core);
  const int64_t pages = (positions + KvPagePool::kPageRows - 1) / KvPagePool::kPageRows;
  return static_cast<uint64_t>(slots) * static_cast<uint64_t>(pages) *
         static_cast<uint64_t>(KvPagePool::kPageRows * width) * 2u * sizeof(float);
}

}  // namespace ponder::exec
