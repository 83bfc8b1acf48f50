#pragma once

// A STREAM-style measurement of the machine's memory read bandwidth: the floor that
// batch-1 decode (one pass over every weight per token) cannot beat. Header-only so that
// any benchmark can report its throughput as a fraction of it.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "exec/cpu/kernels.h"

namespace ponder::bench {

struct BandwidthOptions {
  // Buffer size in bytes; many times the last-level cache so that every pass reads DRAM.
  size_t bytes = size_t{1} << 30;
  // Timed passes over the buffer (after one untimed warm-up pass).
  int passes = 5;
  // Bytes per parallel work item.
  size_t chunk_bytes = size_t{1} << 20;
};

struct BandwidthResult {
  double best_bytes_per_second = 0.0;
  double median_bytes_per_second = 0.0;
};

// Sum of p[0, n) (n a multiple of 64, p 64-byte aligned), read as four concurrent
// streams (the four quarters of the range): one sequential stream per core leaves the
// memory system underused (about 25% lower figures here), while the GEMV kernels read
// several weight rows at once.
inline float SumForBandwidth(const float* p, size_t n) {
  const size_t q = n / 4;
  const float* p0 = p;
  const float* p1 = p + q;
  const float* p2 = p + 2 * q;
  const float* p3 = p + 3 * q;
#if defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < q; i += 16) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p0 + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p1 + i));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p2 + i));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p3 + i));
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#elif defined(__AVX2__)
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < q; i += 8) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p0 + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p1 + i));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p2 + i));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p3 + i));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#else
  float lanes[4] = {};
  for (size_t i = 0; i < q; ++i) {
    lanes[0] += p0[i];
    lanes[1] += p1[i];
    lanes[2] += p2[i];
    lanes[3] += p3[i];
  }
#endif
  float s = 0.0f;
  for (float v : lanes) s += v;
  return s;
}

// A read buffer of options.bytes (allocated and touched once) and timed passes over it on
// the pool's threads (pool may be null: the calling thread only). Lets a benchmark
// alternate bandwidth passes with its own work, so that both see the same machine state.
class BandwidthProbe {
 public:
  explicit BandwidthProbe(exec::cpu::ThreadPool* pool, const BandwidthOptions& options = {})
      : pool_(pool),
        chunk_(std::max<size_t>(64 * sizeof(float), options.chunk_bytes / 256 * 256)),
        chunks_(std::max<size_t>(1, options.bytes / chunk_)),
        buffer_(static_cast<float*>(std::aligned_alloc(64, chunks_ * chunk_))),
        partial_(chunks_) {
    if (!buffer_) return;
    // Touch every page (from the threads that will read it) so that no pass pays for faults.
    ForChunks([&](size_t c) {
      float* p = buffer_.get() + c * floats_per_chunk();
      std::fill(p, p + floats_per_chunk(), 1.0f);
    });
    Pass();  // warm-up
  }
  bool ok() const { return buffer_ != nullptr; }
  size_t bytes() const { return chunks_ * chunk_; }

  // One timed pass: bytes per second.
  double Pass() {
    if (!buffer_) return 0.0;
    const auto start = std::chrono::steady_clock::now();
    ForChunks([&](size_t c) {
      partial_[c] = SumForBandwidth(buffer_.get() + c * floats_per_chunk(), floats_per_chunk());
    });
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    // Keeps the sums observable so that the reads cannot be dropped.
    volatile float sink = 0.0f;
    for (float v : partial_) sink = sink + v;
    return static_cast<double>(bytes()) / elapsed.count();
  }

 private:
  struct FreeDeleter {
    void operator()(float* p) const { std::free(p); }
  };
  size_t floats_per_chunk() const { return chunk_ / sizeof(float); }
  template <typename F>
  void ForChunks(F&& body) {
    auto range = [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) body(static_cast<size_t>(c));
    };
    if (pool_ != nullptr) {
      pool_->ParallelFor(static_cast<int64_t>(chunks_), 1, range);
    } else {
      range(0, static_cast<int64_t>(chunks_));
    }
  }

  exec::cpu::ThreadPool* pool_;
  size_t chunk_, chunks_;
  std::unique_ptr<float, FreeDeleter> buffer_;
  std::vector<float> partial_;
};

// Best and median of `passes` timed passes. Takes about (passes + 2) * bytes / bandwidth
// seconds and needs options.bytes of free memory.
inline BandwidthResult MeasureReadBandwidth(exec::cpu::ThreadPool* pool,
                                            const BandwidthOptions& options = {}) {
  BandwidthProbe probe(pool, options);
  if (!probe.ok()) return {};
  std::vector<double> rates;
  for (int pass = 0; pass < std::max(1, options.passes); ++pass) rates.push_back(probe.Pass());
  std::sort(rates.begin(), rates.end());
  BandwidthResult result;
  result.best_bytes_per_second = rates.back();
  result.median_bytes_per_second = rates[rates.size() / 2];
  return result;
}

}  // namespace ponder::bench
