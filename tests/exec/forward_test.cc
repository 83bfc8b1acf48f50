// The CPU forward pass: exact invariants on random in-memory models.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "exec/cpu/cpu_model.h"
#include "tests/random_model.h"

namespace ponder::exec::cpu {
namespace {

double RelL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

std::vector<int32_t> Tokens(int n, int vocab, int salt = 0) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 37 + 11 + salt * 13) % vocab;
  return t;
}

class ForwardTest : public ::testing::TestWithParam<DType> {};

TEST_P(ForwardTest, KIterationsThenMMoreEqualsKPlusM) {
  testing::RandomModel rm(testing::SmallConfig(), GetParam(), 7);
  ThreadPool pool(2);
  CpuModel model(rm.config(), rm.weights(), &pool);
  const auto tokens = Tokens(6, 96);
  for (double scale : {0.0, 1.0}) {
    std::vector<float> s3, s5;
    auto c1 = model.NewCache();
    auto ref = model.Forward(*c1, tokens, 5, nullptr, 42, scale, &s5);
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    auto c2 = model.NewCache();
    ASSERT_TRUE(model.Forward(*c2, tokens, 3, nullptr, 42, scale, &s3).ok());
    auto c3 = model.NewCache();
    std::vector<float> s_cont;
    auto cont = model.Forward(*c3, tokens, 2, s3.data(), 0, 0.0, &s_cont);
    ASSERT_TRUE(cont.ok());
    EXPECT_EQ(s_cont, s5) << "scale " << scale;
    EXPECT_EQ(*cont, *ref) << "scale " << scale;
  }
}

TEST_P(ForwardTest, PrefillThenDecodeEqualsFullForward) {
  testing::RandomModel rm(testing::SmallConfig(), GetParam(), 8);
  ThreadPool pool(2);
  CpuModel model(rm.config(), rm.weights(), &pool);
  const auto tokens = Tokens(13, 96);
  const int64_t v = rm.config().padded_vocab_size;
  for (double scale : {0.0, 1.0}) {
    for (int64_t steps : {1, 4}) {
      auto full_cache = model.NewCache();
      auto full = model.Forward(*full_cache, tokens, steps, nullptr, 9, scale);
      ASSERT_TRUE(full.ok());
      auto cache = model.NewCache();
      std::vector<float> got;
      auto pre = model.Forward(*cache, std::span(tokens).first(8), steps, nullptr, 9, scale);
      ASSERT_TRUE(pre.ok());
      got = *pre;
      for (size_t i = 8; i < tokens.size(); ++i) {
        auto one = model.Forward(*cache, std::span(tokens).subspan(i, 1), steps, nullptr, 9, scale);
        ASSERT_TRUE(one.ok());
        got.insert(got.end(), one->begin(), one->end());
      }
      ASSERT_EQ(got.size(), tokens.size() * v);
      EXPECT_EQ(cache->tokens(), 13);
      EXPECT_LT(RelL2(got, *full), 1e-5) << "steps " << steps << " scale " << scale;
    }
  }
}

TEST_P(ForwardTest, BatchOfDifferentLengthsEqualsSeparateCalls) {
  testing::RandomModel rm(testing::SmallConfig(), GetParam(), 9);
  ThreadPool pool(2);
  CpuModel model(rm.config(), rm.weights(), &pool);
  const int64_t d = rm.config().n_embd, v = rm.config().padded_vocab_size;
  const std::vector<std::vector<int32_t>> seqs = {Tokens(5, 96, 1), Tokens(1, 96, 2),
                                                  Tokens(9, 96, 3)};
  // Separately, at different depths per sequence.
  const std::vector<int64_t> depth = {2, 4, 3};
  std::vector<std::vector<float>> want;
  for (size_t b = 0; b < seqs.size(); ++b) {
    auto c = model.NewCache();
    auto l = model.Forward(*c, seqs[b], depth[b], nullptr, 5, 1.0);
    ASSERT_TRUE(l.ok());
    want.push_back(*l);
  }
  // Together: each chunk iterates until its own depth, then all go through the coda.
  std::vector<std::unique_ptr<SequenceCache>> caches;
  std::vector<Chunk> chunks;
  std::vector<int32_t> tokens;
  for (const auto& s : seqs) {
    caches.push_back(model.NewCache());
    chunks.push_back({caches.back().get(), 0, static_cast<int64_t>(s.size())});
    tokens.insert(tokens.end(), s.begin(), s.end());
  }
  const int64_t n = tokens.size();
  std::vector<float> e(n * d), s(n * d);
  ASSERT_TRUE(model.Prelude(chunks, tokens, e.data()).ok());
  model.InitState(chunks, 5, 0, 1.0, s.data());
  // Run each chunk to its depth; chunks that are done sit out (call with the others only).
  std::vector<int64_t> offsets = {0, 5, 6, 15};
  for (int64_t it = 1; it <= 4; ++it) {
    std::vector<Chunk> active;
    std::vector<int64_t> its;
    std::vector<float> se, ss;
    std::vector<size_t> which;
    for (size_t b = 0; b < chunks.size(); ++b) {
      if (it > depth[b]) continue;
      active.push_back(chunks[b]);
      its.push_back(it);
      which.push_back(b);
      se.insert(se.end(), e.begin() + offsets[b] * d, e.begin() + offsets[b + 1] * d);
      ss.insert(ss.end(), s.begin() + offsets[b] * d, s.begin() + offsets[b + 1] * d);
    }
    model.CoreStep(active, its, se.data(), ss.data());
    int64_t row = 0;
    for (size_t b : which) {
      std::copy(ss.begin() + row * d, ss.begin() + (row + chunks[b].count) * d,
                s.begin() + offsets[b] * d);
      row += chunks[b].count;
    }
  }
  std::vector<float> logits(n * v);
  model.Coda(chunks, s.data(), false, logits.data());
  for (size_t b = 0; b < seqs.size(); ++b) {
    std::vector<float> got(logits.begin() + offsets[b] * v, logits.begin() + offsets[b + 1] * v);
    EXPECT_LT(RelL2(got, want[b]), 1e-5) << "sequence " << b;
  }
  // last_only gathers the final row of each chunk.
  std::vector<float> last(chunks.size() * v);
  model.Coda(chunks, s.data(), true, last.data());
  for (size_t b = 0; b < seqs.size(); ++b) {
    std::vector<float> got(last.begin() + b * v, last.begin() + (b + 1) * v);
    std::vector<float> ref(want[b].end() - v, want[b].end());
    EXPECT_LT(RelL2(got, ref), 1e-5);
  }
}

TEST_P(ForwardTest, ZeroInitScaleGivesZeroStateAndSeedsAreReproducible) {
  testing::RandomModel rm(testing::SmallConfig(), GetParam(), 10);
  CpuModel model(rm.config(), rm.weights(), nullptr);
  auto cache = model.NewCache();
  Chunk c{cache.get(), 3, 4};
  const int64_t d = rm.config().n_embd;
  std::vector<float> a(4 * d), b(4 * d), z(4 * d);
  model.InitState({&c, 1}, 1, 0, 0.0, z.data());
  for (float x : z) EXPECT_EQ(x, 0.0f);
  model.InitState({&c, 1}, 1, 0, 1.0, a.data());
  model.InitState({&c, 1}, 1, 0, 1.0, b.data());
  EXPECT_EQ(a, b);
  // Truncated at 3 std of the scaled distribution; std close to init_std * embed_scale.
  const double sd = rm.config().init_std * rm.config().embed_scale;
  double sum2 = 0;
  for (float x : a) {
    EXPECT_LE(std::fabs(x), 3.0 * sd * (1 + 1e-6));
    sum2 += x * x;
  }
  const double got_sd = std::sqrt(sum2 / a.size());
  EXPECT_NEAR(got_sd, sd * 0.9866, sd * 0.15);  // truncation at 3 sd shrinks std by 1.3%
  model.InitState({&c, 1}, 2, 0, 1.0, b.data());
  EXPECT_NE(a, b);
}

// Logit checks through the backend (the host computation every backend starts from): for
// the last row of each chunk, the value a SignalTracker of that sequence gives on Coda's
// logits, check after check; LastLogits returns the rows asked for; Reset starts over.
TEST_P(ForwardTest, CodaChecksGiveEachSequencesTrackerValues) {
  testing::RandomModel rm(testing::SmallConfig(), GetParam(), 12);
  CpuModel model(rm.config(), rm.weights(), nullptr);
  const int64_t d = rm.config().n_embd, v = rm.config().padded_vocab_size;
  const int64_t vocab = rm.config().vocab_size;
  for (const policy::ExitRule rule :
       {policy::ExitRule::kKl, policy::ExitRule::kMinpKl, policy::ExitRule::kEntropyDiff,
        policy::ExitRule::kArgmaxStability}) {
    SCOPED_TRACE(policy::ExitRuleName(rule));
    auto c1 = model.NewCache(), c2 = model.NewCache();
    std::vector<float> s1, s2;
    ASSERT_TRUE(model.Forward(*c1, Tokens(3, 96), 2, nullptr, 1, 1.0, &s1).ok());
    ASSERT_TRUE(model.Forward(*c2, Tokens(5, 96, 1), 3, nullptr, 2, 1.0, &s2).ok());
    const Chunk chunks[] = {{c1.get(), 0, 3}, {c2.get(), 0, 5}};
    std::vector<float> s = s1;
    s.insert(s.end(), s2.begin(), s2.end());
    auto h1 = model.NewLogitHistory(), h2 = model.NewLogitHistory();
    h1->Reset();
    h2->Reset();
    policy::SignalTracker t1, t2;
    for (int check = 0; check < 4; ++check) {
      if (check == 3) {  // a new token for the first sequence
        h1->Reset();
        t1.Begin({});
      }
      for (int64_t i = 0; i < static_cast<int64_t>(s.size()); ++i) {
        s[i] += 0.05f * std::sin(0.1f * static_cast<float>(i + check * d));
      }
      std::vector<float> ref(2 * v);
      model.Coda(chunks, s.data(), /*last_only=*/true, ref.data());
      const LogitCheck checks[] = {{h1.get(), rule}, {h2.get(), rule}};
      double values[2];
      model.CodaChecks(chunks, s.data(), checks, values);
      EXPECT_EQ(values[0], t1.ObserveLogits(rule, {ref.data(), static_cast<size_t>(vocab)}));
      EXPECT_EQ(values[1], t2.ObserveLogits(rule, {ref.data() + v, static_cast<size_t>(vocab)}));
      std::vector<float> got(v);
      const size_t second[] = {1};
      model.LastLogits(second, got.data());
      EXPECT_EQ(got, std::vector<float>(ref.begin() + v, ref.end()));
    }
  }
}

TEST_P(ForwardTest, BadTokenIsAnError) {
  testing::RandomModel rm(testing::SmallConfig(), GetParam(), 11);
  CpuModel model(rm.config(), rm.weights(), nullptr);
  auto cache = model.NewCache();
  std::vector<int32_t> bad = {1, 96};
  auto r = model.Forward(*cache, bad, 2, nullptr, 0, 0.0);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("96"), std::string::npos);
  std::vector<int32_t> too_long(300, 1);
  EXPECT_FALSE(model.Forward(*cache, too_long, 1, nullptr, 0, 0.0).ok());
}

INSTANTIATE_TEST_SUITE_P(DTypes, ForwardTest,
                         ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

}  // namespace
}  // namespace ponder::exec::cpu
