// Continuous depth batching: sequences at different depths share ticks, exit on their own
// signals, and get exactly the tokens, steps and exit reasons they get alone.
#include "exec/depth_batcher.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "exec/cost.h"
#include "exec/cpu/cpu_model.h"
#include "model/checkpoint.h"

namespace ponder::exec {
namespace {

using policy::ExitReason;
using policy::ExitRule;

struct Case {
  std::string prompt;
  ExitRule rule;
  double threshold;
  int min_steps, max_steps, check_every, check_from;
  bool warm_start;
  const char* kv;
  double gate = 0.0;  // gate_latent_below when > 0
};

policy::DepthPlan PlanOf(const Case& c) {
  policy::DepthPlan p;
  p.min_steps = c.min_steps;
  p.max_steps = p.class_max_steps = c.max_steps;
  p.rule = c.rule;
  p.threshold = c.threshold;
  p.check_every = c.check_every;
  p.check_from = c.check_from;
  p.warm_start = c.warm_start;
  if (c.gate > 0) p.gate_latent_below = c.gate;
  return p;
}

class DepthBatcherTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto ckpt = model::LoadCheckpoint(std::string(PONDER_SOURCE_DIR) + "/model/zoo/ponder-micro");
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    ckpt_ = std::move(*ckpt).release();
  }
  static void TearDownTestSuite() {
    delete ckpt_;
    ckpt_ = nullptr;
  }

  SequenceSpec Spec(const Case& c, uint64_t seed) {
    SequenceSpec s;
    s.prompt = {ckpt_->tokenizer->TokenToId("<|begin_text|>")};
    auto ids = ckpt_->tokenizer->Encode(c.prompt, false);
    EXPECT_TRUE(ids.ok());
    s.prompt.insert(s.prompt.end(), ids->begin(), ids->end());
    s.plan = PlanOf(c);
    s.options.max_tokens = 6;
    s.options.seed = seed;
    s.options.stop_ids = {ckpt_->tokenizer->TokenToId("<|end_text|>")};
    auto kv = KvStrategy::Parse(c.kv);
    EXPECT_TRUE(kv.ok());
    s.options.kv = *kv;
    return s;
  }

  static model::Checkpoint* ckpt_;
};
model::Checkpoint* DepthBatcherTest::ckpt_ = nullptr;

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {"+8*3*7+6+7+7+4+3+0+3+1=", ExitRule::kKl, 1e-3, 2, 32, 1, 1, false, "full"},
      {"z6v0l0n2c2?v", ExitRule::kLatentDiff, 0.03, 1, 16, 1, 2, false, "full"},
      {"+4+8+2*3+3=", ExitRule::kMinpKl, 1e-5, 4, 40, 2, 4, false, "compress-s2"},
      {"abcdef|", ExitRule::kEntropyDiff, 1e-3, 1, 24, 1, 1, true, "full"},
      {"+7+9+0+9*9*9=", ExitRule::kCosine, 1e-3, 2, 32, 1, 2, false, "full"},
      {"w0x6?w", ExitRule::kArgmaxStability, 3, 1, 20, 1, 1, false, "compress-s2"},
      {"+1*3+5+2*7+4+4*9=", ExitRule::kKl, 5e-4, 2, 48, 2, 2, false, "full", 0.1},
      {"qwerty|", ExitRule::kNone, 0, 8, 8, 1, 1, false, "full"},
  };
  return cases;
}

void ExpectSame(const AdaptiveResult& alone, const AdaptiveResult& batched,
                const std::string& what) {
  ASSERT_EQ(alone.tokens.size(), batched.tokens.size()) << what;
  for (size_t t = 0; t < alone.tokens.size(); ++t) {
    EXPECT_EQ(alone.tokens[t].token, batched.tokens[t].token) << what << " token " << t;
    EXPECT_EQ(alone.tokens[t].steps, batched.tokens[t].steps) << what << " token " << t;
    EXPECT_EQ(alone.tokens[t].reason, batched.tokens[t].reason) << what << " token " << t;
  }
  EXPECT_EQ(alone.prompt_steps, batched.prompt_steps) << what;
  EXPECT_EQ(alone.finish_reason, batched.finish_reason) << what;
  EXPECT_EQ(alone.checks.logit_checks, batched.checks.logit_checks) << what;
  EXPECT_EQ(alone.checks.latent_checks, batched.checks.latent_checks) << what;
}

// Every sequence alone, then all together with staggered arrivals (some join while others
// are deep in a token) and several copies so that a tick holds more than 64 rows: the
// batched results must equal the batch-1 results exactly.
TEST_F(DepthBatcherTest, BatchedEqualsBatchOneForEveryRule) {
  cpu::CpuModel model(ckpt_->config, ckpt_->weights, nullptr);
  std::vector<AdaptiveResult> alone;
  std::vector<SequenceSpec> specs;
  for (int copy = 0; copy < 3; ++copy) {
    for (size_t i = 0; i < Cases().size(); ++i) specs.push_back(Spec(Cases()[i], 100 * copy + i));
  }
  for (const SequenceSpec& s : specs) {
    auto r = GenerateAdaptive(model, s.prompt, s.plan, s.options);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    alone.push_back(std::move(*r));
  }
  // Early exits did happen, at different depths, or the test would prove little.
  std::set<int64_t> depths;
  int converged = 0;
  for (const auto& r : alone) {
    for (const auto& t : r.tokens) {
      depths.insert(t.steps);
      converged += t.reason == ExitReason::kConverged;
    }
  }
  EXPECT_GE(depths.size(), 5u);
  EXPECT_GT(converged, 10);

  DepthBatcher batcher(model);
  std::vector<DepthBatcher::Id> ids(specs.size(), 0);
  size_t next = 0;
  int64_t max_rows = 0, tick = 0;
  std::vector<int64_t> rows_in_tick;
  while (next < specs.size() || batcher.active() > 0) {
    // Two thirds join at once, the rest one every third tick.
    while (next < specs.size() && (next < 2 * specs.size() / 3 || tick % 3 == 0)) {
      auto id = batcher.Add(specs[next]);
      ASSERT_TRUE(id.ok()) << id.status().ToString();
      ids[next++] = *id;
      if (next >= 2 * specs.size() / 3) break;
    }
    ASSERT_TRUE(batcher.Tick().ok());
    max_rows = std::max(max_rows, batcher.last_tick_rows());
    ++tick;
  }
  EXPECT_GE(max_rows, 16);
  for (size_t i = 0; i < specs.size(); ++i) {
    ASSERT_TRUE(batcher.finished(ids[i]));
    auto r = batcher.TakeResult(ids[i]);
    ASSERT_TRUE(r.ok());
    ExpectSame(alone[i], *r, "sequence " + std::to_string(i));
  }
  EXPECT_EQ(batcher.kv_bytes(), 0u);
}

// Below the token level: a batch of more than 64 rows gives every row bit for bit what
// the row's sequence gets alone (the GEMM path would not; see CpuModel::batch_invariant).
TEST_F(DepthBatcherTest, RowsAreBitwiseEqualToBatchOneAboveSixtyFourRows) {
  cpu::CpuModel model(ckpt_->config, ckpt_->weights, nullptr);
  const int64_t d = ckpt_->config.n_embd;
  const int64_t lens[] = {30, 25, 40};  // 95 rows together
  std::vector<std::unique_ptr<SequenceCache>> caches;
  std::vector<cpu::Chunk> chunks;
  std::vector<int32_t> tokens;
  for (int64_t len : lens) {
    caches.push_back(model.NewCache());
    chunks.push_back({caches.back().get(), 0, len});
    for (int64_t i = 0; i < len; ++i) tokens.push_back(static_cast<int32_t>((i * 7 + len) % 250));
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  std::vector<float> e(n * d), s(n * d, 0.0f);
  ASSERT_TRUE(model.Prelude(chunks, tokens, e.data()).ok());
  const std::vector<int64_t> its = {1, 1, 1};
  model.CoreStep(chunks, its, e.data(), s.data());
  int64_t row = 0;
  for (size_t b = 0; b < chunks.size(); ++b) {
    auto cache = model.NewCache();
    cpu::Chunk one{cache.get(), 0, lens[b]};
    std::vector<float> e1(lens[b] * d), s1(lens[b] * d, 0.0f);
    ASSERT_TRUE(
        model.Prelude({&one, 1}, {&tokens[row], static_cast<size_t>(lens[b])}, e1.data()).ok());
    const int64_t it = 1;
    model.CoreStep({&one, 1}, {&it, 1}, e1.data(), s1.data());
    for (int64_t k = 0; k < lens[b] * d; ++k) ASSERT_EQ(s1[k], s[row * d + k]) << b << " " << k;
    row += lens[b];
  }
}

TEST_F(DepthBatcherTest, RemoveFreesTheCacheAtOnceAndOthersGoOn) {
  cpu::CpuModel model(ckpt_->config, ckpt_->weights, nullptr);
  const SequenceSpec a = Spec(Cases()[0], 1), b = Spec(Cases()[1], 2);
  auto want = GenerateAdaptive(model, b.prompt, b.plan, b.options);
  ASSERT_TRUE(want.ok());
  DepthBatcher batcher(model);
  auto ia = batcher.Add(a), ib = batcher.Add(b);
  ASSERT_TRUE(ia.ok() && ib.ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(batcher.Tick().ok());
  EXPECT_GT(batcher.kv_bytes(*ia), 0u);
  const uint64_t before = batcher.kv_bytes();
  EXPECT_TRUE(batcher.Remove(*ia));  // cancelled mid-token
  EXPECT_FALSE(batcher.Remove(*ia));
  EXPECT_EQ(batcher.kv_bytes(*ia), 0u);
  EXPECT_LT(batcher.kv_bytes(), before);
  EXPECT_EQ(batcher.active(), 1);
  while (!batcher.finished(*ib)) ASSERT_TRUE(batcher.Tick().ok());
  auto got = batcher.TakeResult(*ib);
  ASSERT_TRUE(got.ok());
  ExpectSame(*want, *got, "survivor");
  EXPECT_EQ(batcher.kv_bytes(), 0u);
  EXPECT_FALSE(batcher.TakeResult(*ib).ok());
}

double fake_now = 0.0;
double FakeNow() { return fake_now; }

TEST_F(DepthBatcherTest, DeadlineEndsTheSequenceWithWhatItHas) {
  cpu::CpuModel model(ckpt_->config, ckpt_->weights, nullptr);
  SequenceSpec s = Spec(Cases()[7], 3);  // rule none, 8 steps per token
  s.plan.start_seconds = 0.0;
  s.plan.deadline_seconds = 1.0;
  fake_now = 0.0;
  DepthBatcher batcher(model, &FakeNow);
  auto id = batcher.Add(s);
  ASSERT_TRUE(id.ok());
  for (int i = 0; i < 8 + 3; ++i) ASSERT_TRUE(batcher.Tick().ok());  // token 1, part of 2
  fake_now = 2.0;
  ASSERT_TRUE(batcher.Tick().ok());
  ASSERT_TRUE(batcher.finished(*id));
  auto r = batcher.TakeResult(*id);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->finish_reason, "deadline");
  ASSERT_EQ(r->tokens.size(), 2u);
  EXPECT_EQ(r->tokens[0].steps, 8);
  EXPECT_EQ(r->tokens[1].steps, 4);
  EXPECT_EQ(r->tokens[1].reason, ExitReason::kDeadline);
}

TEST_F(DepthBatcherTest, ElasticCapsAndBudgetStopTokensEarly) {
  cpu::CpuModel model(ckpt_->config, ckpt_->weights, nullptr);
  SequenceSpec s = Spec(Cases()[7], 4);
  s.plan.min_steps = 2;  // none rule, 2..8
  DepthBatcher batcher(model);
  auto id = batcher.Add(s);
  ASSERT_TRUE(id.ok());
  batcher.SetControl(*id, {.load_cap = 3});
  while (!batcher.finished(*id)) ASSERT_TRUE(batcher.Tick().ok());
  auto r = batcher.TakeResult(*id);
  ASSERT_TRUE(r.ok());
  for (const auto& t : r->tokens) {
    EXPECT_EQ(t.steps, 3);
    EXPECT_EQ(t.reason, ExitReason::kLoad);
  }
  auto id2 = batcher.Add(s);
  ASSERT_TRUE(id2.ok());
  batcher.SetControl(*id2, {.budget_exhausted = true});
  while (!batcher.finished(*id2)) ASSERT_TRUE(batcher.Tick().ok());
  auto r2 = batcher.TakeResult(*id2);
  ASSERT_TRUE(r2.ok());
  for (const auto& t : r2->tokens) {
    EXPECT_EQ(t.steps, 2);  // the class minimum
    EXPECT_EQ(t.reason, ExitReason::kBudget);
  }
}

TEST_F(DepthBatcherTest, BadInputIsAnErrorAndAddsNothing) {
  cpu::CpuModel model(ckpt_->config, ckpt_->weights, nullptr);
  DepthBatcher batcher(model);
  SequenceSpec s = Spec(Cases()[0], 1);
  SequenceSpec empty = s;
  empty.prompt.clear();
  EXPECT_FALSE(batcher.Add(empty).ok());
  SequenceSpec bad_id = s;
  bad_id.prompt.push_back(static_cast<int32_t>(ckpt_->config.vocab_size));
  auto r = batcher.Add(bad_id);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("outside the vocabulary"), std::string::npos);
  SequenceSpec bad_plan = s;
  bad_plan.plan.min_steps = 9;
  bad_plan.plan.max_steps = 3;
  EXPECT_FALSE(batcher.Add(bad_plan).ok());
  SequenceSpec long_prompt = s;
  long_prompt.prompt.assign(ckpt_->config.block_size, s.prompt[0]);
  EXPECT_FALSE(batcher.Add(long_prompt).ok());
  EXPECT_EQ(batcher.active(), 0);
  EXPECT_TRUE(batcher.Tick().ok());
}

// Lockstep batching (the baseline of bench/serving_bench): a batch advances token by token
// at the pace of its deepest member. Every sequence still gets exactly its tokens, steps
// and exit reasons; waiting sequences run no iteration, so the batch needs at least as
// many ticks, and strictly more when depths differ.
TEST_F(DepthBatcherTest, LockstepGivesTheSameTokensInAtLeastAsManyTicks) {
  cpu::CpuModel model(ckpt_->config, ckpt_->weights, nullptr);
  std::vector<SequenceSpec> specs;
  for (size_t i = 0; i < Cases().size(); ++i) specs.push_back(Spec(Cases()[i], 7 + i));
  struct Run {
    std::vector<AdaptiveResult> results;
    int64_t ticks = 0, rows = 0;  // ticks until all finished; rows iterated over them
  };
  auto run = [&](bool lockstep) {
    Run out;
    DepthBatcher batcher(model);
    batcher.set_lockstep(lockstep);
    EXPECT_EQ(batcher.lockstep(), lockstep);
    std::vector<DepthBatcher::Id> ids;
    for (const SequenceSpec& s : specs) {
      auto id = batcher.Add(s);
      EXPECT_TRUE(id.ok()) << id.status().ToString();
      ids.push_back(*id);
    }
    while (batcher.active() > 0) {
      EXPECT_TRUE(batcher.Tick().ok());
      ++out.ticks;
      out.rows += batcher.last_tick_rows();
      if (out.ticks > 100000) break;
    }
    // FinishedIds lists every finished sequence once, in finishing order.
    std::vector<DepthBatcher::Id> finished = batcher.FinishedIds();
    EXPECT_EQ(finished.size(), ids.size());
    std::sort(finished.begin(), finished.end());
    EXPECT_EQ(finished, ids);
    for (DepthBatcher::Id id : ids) {
      auto r = batcher.TakeResult(id);
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      out.results.push_back(r.ok() ? std::move(*r) : AdaptiveResult{});
    }
    EXPECT_TRUE(batcher.FinishedIds().empty());  // taken results leave the list
    return out;
  };
  const Run normal = run(false), lockstep = run(true);
  ASSERT_EQ(normal.results.size(), specs.size());
  ASSERT_EQ(lockstep.results.size(), specs.size());
  int64_t iterations = 0;
  std::set<int64_t> depths;
  for (size_t i = 0; i < specs.size(); ++i) {
    ExpectSame(normal.results[i], lockstep.results[i], "sequence " + std::to_string(i));
    for (const auto& t : normal.results[i].tokens) {  // tokens[0] is the prompt's prefill
      iterations += t.steps;
      depths.insert(t.steps);
    }
  }
  EXPECT_GE(depths.size(), 3u);  // tokens of different depths, or lockstep would cost nothing
  // Both modes ran the same iterations (one row each): only their spread over ticks differs.
  EXPECT_EQ(normal.rows, iterations);
  EXPECT_EQ(lockstep.rows, iterations);
  EXPECT_GT(lockstep.ticks, normal.ticks);
  // Normal mode is as short as the longest sequence alone; lockstep is the sum over token
  // positions of the deepest token at that position among the sequences still running.
  int64_t longest = 0, lockstep_ticks = 0;
  for (const auto& r : normal.results) {
    int64_t n = 0;
    for (const auto& t : r.tokens) n += t.steps;
    longest = std::max(longest, n);
  }
  for (size_t t = 0;; ++t) {
    int64_t deepest = 0;
    for (const auto& r : normal.results) {
      if (t < r.tokens.size()) deepest = std::max(deepest, r.tokens[t].steps);
    }
    if (deepest == 0) break;
    lockstep_ticks += deepest;
  }
  EXPECT_EQ(normal.ticks, longest);
  EXPECT_EQ(lockstep.ticks, lockstep_ticks);
}

}  // namespace
}  // namespace ponder::exec

namespace ponder::exec {
namespace {

// Runs specs through one batcher (all added at once) and returns their results in order.
std::vector<AdaptiveResult> RunAll(DepthBatcher& batcher, const std::vector<SequenceSpec>& specs,
                                   int64_t* max_tick_tokens = nullptr) {
  std::vector<DepthBatcher::Id> ids;
  for (const SequenceSpec& s : specs) {
    auto id = batcher.Add(s);
    EXPECT_TRUE(id.ok()) << id.status().ToString();
    ids.push_back(id.ok() ? *id : 0);
  }
  while (batcher.active() > 0) {
    EXPECT_TRUE(batcher.Tick().ok());
    if (max_tick_tokens) *max_tick_tokens = std::max(*max_tick_tokens, batcher.last_tick_tokens());
  }
  std::vector<AdaptiveResult> out;
  for (DepthBatcher::Id id : ids) {
    auto r = batcher.TakeResult(id);
    EXPECT_TRUE(r.ok());
    out.push_back(r.ok() ? std::move(*r) : AdaptiveResult{});
  }
  return out;
}

// Chunked prefill at a fixed depth gives the unchunked result: every chunk runs the same
// iterations, and its rows see the same keys at each iteration.
TEST_F(DepthBatcherTest, ChunkedPrefillAtFixedDepthEqualsTheWholePrompt) {
  cpu::CpuModel model(ckpt_->config, ckpt_->weights, nullptr);
  std::vector<SequenceSpec> specs;
  for (const char* prompt : {"+8*3*7+6+7+7+4+3+0+3+1=", "+1*3+5+2*7+4+4*9=", "z6v0l0n2c2?v"}) {
    specs.push_back(Spec({prompt, ExitRule::kNone, 0, 12, 12, 1, 1, false, "full"}, 7));
  }
  DepthBatcher whole(model);
  const auto want = RunAll(whole, specs);
  DepthBatcher chunked(model);
  chunked.set_prefill_chunk(5);
  const auto got = RunAll(chunked, specs);
  for (size_t i = 0; i < specs.size(); ++i) {
    // prompt_steps counts every chunk's iterations; the rest must be the same.
    AdaptiveResult same = got[i];
    same.prompt_steps = got[i].tokens.at(0).steps;
    ExpectSame(want[i], same, "fixed depth, sequence " + std::to_string(i));
    // Prompts of 13 to 25 tokens in chunks of 5: every chunk but the last is listed.
    const int64_t rows = static_cast<int64_t>(specs[i].prompt.size());
    EXPECT_EQ(static_cast<int64_t>(got[i].prefill_chunks.size()), (rows - 1) / 5);
    int64_t listed = 0;
    for (const auto& c : got[i].prefill_chunks) {
      EXPECT_EQ(c.steps, 12);
      listed += c.rows;
    }
    EXPECT_EQ(got[i].prompt_steps, 12 * (static_cast<int64_t>(got[i].prefill_chunks.size()) + 1));
    const auto passes = PassesOf(got[i], rows);
    ASSERT_EQ(passes.size(), got[i].prefill_chunks.size() + got[i].tokens.size());
    int64_t position = 0;
    for (size_t p = 0; p <= got[i].prefill_chunks.size(); ++p) {
      EXPECT_EQ(passes[p].position, position);
      position += passes[p].rows;
    }
    EXPECT_EQ(position, rows);
    EXPECT_LT(listed, rows);
  }
}

// With per-token exits each chunk exits on its own last row: the chunk size is part of the
// sequence's definition, and a sequence still gets the same result whatever shares its
// ticks. A long prompt's chunks bound what it adds to a tick.
TEST_F(DepthBatcherTest, ChunkedPrefillIsBatchInvariantAndBoundsTheTick) {
  cpu::CpuModel model(ckpt_->config, ckpt_->weights, nullptr);
  std::vector<SequenceSpec> specs;
  for (const Case& c : Cases()) specs.push_back(Spec(c, 3));
  std::vector<AdaptiveResult> alone;
  for (const SequenceSpec& s : specs) {
    DepthBatcher one(model);
    one.set_prefill_chunk(4);
    alone.push_back(std::move(RunAll(one, {s})[0]));
  }
  DepthBatcher batched(model);
  batched.set_prefill_chunk(4);
  int64_t max_tokens = 0;
  const auto together = RunAll(batched, specs, &max_tokens);
  int chunked = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    ExpectSame(alone[i], together[i], "chunked, case " + std::to_string(i));
    chunked += !together[i].prefill_chunks.empty();
  }
  EXPECT_GE(chunked, 6);
  // At most 4 prompt rows per sequence in any tick.
  EXPECT_LE(max_tokens, 4 * static_cast<int64_t>(specs.size()));
  EXPECT_GT(max_tokens, 0);
}

}  // namespace
}  // namespace ponder::exec
