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

SequenceCache::SequenceCache(int64_t n_prelude, int64_t n_core, int64_t n_coda, int64_t width,
                             KvStrategy strategy)
    : n_core_(n_core), width_(width), strategy_(strategy), prelude_(n_prelude), coda_(n_coda) {}

KvSlot& SequenceCache::Core(int64_t iteration, int64_t layer) {
  const int64_t slot = strategy_.CoreSlot(n_core_ * (iteration - 1) + layer);
  if (slot >= static_cast<int64_t>(core_.size())) core_.resize(slot + 1);
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
    for (const KvSlot& s : *group) n += (s.k.capacity() + s.v.capacity()) * sizeof(float);
  }
  return n;
}

void SequenceCache::Truncate(int64_t n) {
  for (auto* group : {&prelude_, &core_, &coda_}) {
    for (KvSlot& s : *group) s.length = std::min(s.length, n);
  }
  tokens_ = std::min(tokens_, n);
  if (static_cast<int64_t>(depth_.size()) > n) depth_.resize(n);
}

namespace {
constexpr int64_t kMinSlotRows = 16;  // a slot's first allocation, in positions
}  // namespace

void EnsureCapacity(KvSlot& slot, int64_t end, int64_t width) {
  const size_t need = static_cast<size_t>(end * width);
  if (slot.k.size() >= need) return;
  size_t cap = std::max<size_t>(need, slot.k.size() * 2);
  cap = std::max<size_t>(cap, static_cast<size_t>(kMinSlotRows * width));
  slot.k.resize(cap);
  slot.v.resize(cap);
}

uint64_t MaxSequenceBytes(int64_t n_prelude, int64_t n_core, int64_t n_coda, int64_t width,
                          const KvStrategy& strategy, int64_t max_iterations, int64_t positions) {
  const int64_t slots = n_prelude + n_coda + strategy.CoreSlots(max_iterations, n_core);
  // Doubling never leaves a slot with more than twice the positions it holds.
  const int64_t rows = std::max<int64_t>(kMinSlotRows, 2 * positions);
  return static_cast<uint64_t>(slots) * static_cast<uint64_t>(rows) * static_cast<uint64_t>(width) *
         2u * sizeof(float);
}

}  // namespace ponder::exec
