#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "exec/kv_cache.h"
#include "exec/sampling.h"

namespace ponder::exec {
namespace {

TEST(KvStrategyTest, ParsesFullAndCompress) {
  auto full = KvStrategy::Parse("full");
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->Name(), "full");
  EXPECT_EQ(full->CoreSlot(37), 37);
  EXPECT_EQ(full->CoreSlots(32, 4), 128);
  auto ring = KvStrategy::Parse("compress-s4");
  ASSERT_TRUE(ring.ok());
  EXPECT_EQ(ring->Name(), "compress-s4");
  EXPECT_EQ(ring->CoreSlot(9), 1);
  EXPECT_EQ(ring->CoreSlots(32, 4), 4);
  EXPECT_EQ(ring->CoreSlots(1, 2), 2);
  for (const char* bad : {"", "compress-s0", "compress-s", "compress-sx", "latest", "FULL"}) {
    auto r = KvStrategy::Parse(bad);
    EXPECT_FALSE(r.ok()) << bad;
  }
  EXPECT_NE(KvStrategy::Parse("nope").status().message().find("nope"), std::string::npos);
}

TEST(SequenceCacheTest, SlotsFollowTheStrategyAndBytesAreCounted) {
  KvPagePool pool(8);
  const uint64_t page = 2u * KvPagePool::kPageRows * 8 * sizeof(float);
  EXPECT_EQ(pool.page_bytes(), page);
  {
    SequenceCache full(1, 3, 2, 8, KvStrategy{}, &pool);
    EXPECT_EQ(full.bytes(), 0u);
    full.Core(2, 1).Reserve(5);  // core step index 3 * 1 + 1 = 4: one page
    EXPECT_NE(&full.Core(2, 1), &full.Core(1, 1));
    EXPECT_EQ(full.bytes(), page);
    EXPECT_EQ(pool.bytes_in_use(), page);
    full.Prelude(0).Reserve(KvPagePool::kPageRows + 1);  // two pages
    EXPECT_EQ(full.bytes(), 3 * page);
    EXPECT_EQ(full.bytes(), pool.bytes_in_use());
    // Rows live in their pages: K and V of a position are distinct, writable rows.
    KvSlot& s = full.Prelude(0);
    for (int64_t p = 0; p <= KvPagePool::kPageRows; ++p) {
      s.K(p)[0] = static_cast<float>(p);
      s.V(p)[7] = static_cast<float>(-p);
    }
    for (int64_t p = 0; p <= KvPagePool::kPageRows; ++p) {
      EXPECT_EQ(s.K(p)[0], static_cast<float>(p));
      EXPECT_EQ(s.V(p)[7], static_cast<float>(-p));
    }
    full.Truncate(3);  // the prelude's second page goes back
    EXPECT_EQ(full.bytes(), 2 * page);
    EXPECT_EQ(pool.bytes_in_use(), 2 * page);
  }
  // A finished sequence gives every page back; the pool keeps them for reuse.
  EXPECT_EQ(pool.bytes_in_use(), 0u);
  EXPECT_EQ(pool.bytes_allocated(), 3 * page);
  SequenceCache again(1, 3, 2, 8, KvStrategy{}, &pool);
  again.Coda(1).Reserve(1);
  EXPECT_EQ(pool.bytes_allocated(), 3 * page);  // reused, not allocated
  // The worst case admission reserves is what a cache that deep holds.
  const uint64_t worst = MaxSequenceBytes(1, 3, 2, 8, KvStrategy{}, 2, 17);
  EXPECT_EQ(worst, (1 + 2 + 3 * 2) * 2 * page);
  auto ring = KvStrategy::Parse("compress-s3");
  SequenceCache shared(1, 3, 2, 8, *ring);
  EXPECT_EQ(&shared.Core(1, 0), &shared.Core(2, 0));  // one slot per physical layer
  EXPECT_NE(&shared.Core(1, 0), &shared.Core(1, 1));
  shared.Core(1, 0).length = 7;
  shared.set_tokens(7);
  shared.Truncate(4);
  EXPECT_EQ(shared.Core(1, 0).length, 4);
  EXPECT_EQ(shared.tokens(), 4);
}

TEST(SamplingTest, GreedyIsArgmax) {
  std::vector<float> logits = {0.1f, 3.0f, -2.0f, 3.0f};
  uint64_t rng = 1;
  EXPECT_EQ(Sample(logits, {}, rng), 1);
  EXPECT_EQ(Argmax(logits), 1);
}

TEST(SamplingTest, TemperatureFollowsTheDistribution) {
  // p = softmax([0, log 3]) = [0.25, 0.75].
  std::vector<float> logits = {0.0f, std::log(3.0f)};
  SamplingOptions o;
  o.temperature = 1.0;
  uint64_t rng = 42;
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += Sample(logits, o, rng);
  EXPECT_NEAR(ones / double(n), 0.75, 0.02);
}

TEST(SamplingTest, TopPKeepsTheNucleusAndSeedsReplay) {
  std::vector<float> logits = {std::log(0.6f), std::log(0.3f), std::log(0.1f)};
  SamplingOptions o;
  o.temperature = 1.0;
  o.top_p = 0.85;  // keeps tokens 0 and 1 only
  uint64_t rng = 7;
  std::vector<int> seen(3, 0);
  for (int i = 0; i < 5000; ++i) seen[Sample(logits, o, rng)]++;
  EXPECT_EQ(seen[2], 0);
  EXPECT_GT(seen[1], 1000);
  uint64_t a = 99, b = 99;
  for (int i = 0; i < 100; ++i) EXPECT_EQ(Sample(logits, o, a), Sample(logits, o, b));
}

}  // namespace
}  // namespace ponder::exec
