// Per-token exits: the KV lookup for tokens that stopped early, and adaptive generation
// driven by the policy's ExitController.
#include "exec/adaptive.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "exec/cpu/cpu_model.h"
#include "exec/generator.h"
#include "model/checkpoint.h"
#include "tests/random_model.h"

namespace ponder::exec {
namespace {

using cpu::Chunk;
using cpu::CpuModel;

std::vector<float> RunChunk(CpuModel& model, SequenceCache& cache,
                            const std::vector<int32_t>& tokens, int64_t steps) {
  const int64_t d = model.config().n_embd, n = tokens.size();
  Chunk c{&cache, cache.tokens(), n};
  std::vector<float> e(n * d), s(n * d), logits(model.config().padded_vocab_size);
  EXPECT_TRUE(model.Prelude({&c, 1}, tokens, e.data()).ok());
  model.InitState({&c, 1}, 3, 0, 1.0, s.data());
  for (int64_t i = 1; i <= steps; ++i) model.CoreStep({&c, 1}, {&i, 1}, e.data(), s.data());
  model.Coda({&c, 1}, s.data(), true, logits.data());
  return logits;
}

// A later, deeper token reads an earlier, shallower token's keys from the earlier token's
// last iteration of the same layer: the same as if that token's entries had been copied
// forward into every deeper iteration's slot.
TEST(KvLookupTest, ShallowTokensAreReadFromTheirLastIteration) {
  testing::RandomModel rm(testing::SmallConfig(), DType::kF32, 21);
  CpuModel model(rm.config(), rm.weights(), nullptr);
  const std::vector<int32_t> prompt = {5, 9, 14, 3, 27};
  const int64_t d = rm.config().n_embd, core = rm.config().n_layers_in_recurrent_block;
  auto gap = model.NewCache();
  auto filled = model.NewCache();
  RunChunk(model, *gap, prompt, 2);
  RunChunk(model, *filled, prompt, 2);
  EXPECT_EQ(gap->depth(4), 2);
  EXPECT_EQ(gap->MinDepth(5), 2);
  // Copy the prompt's iteration-2 entries into iterations 3..5 of `filled`.
  for (int64_t it = 3; it <= 5; ++it) {
    for (int64_t l = 0; l < core; ++l) {
      KvSlot& dst = filled->Core(it, l);
      const KvSlot& src = filled->Core(2, l);
      dst.Reserve(5);
      for (int64_t p = 0; p < 5; ++p) {
        std::copy(src.K(p), src.K(p) + d, dst.K(p));
        std::copy(src.V(p), src.V(p) + d, dst.V(p));
      }
      dst.length = 5;
    }
  }
  filled->SetDepth(0, 5, 5);  // as if the prompt had run 5 iterations
  const auto a = RunChunk(model, *gap, {31}, 5);
  const auto b = RunChunk(model, *filled, {31}, 5);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_FLOAT_EQ(a[i], b[i]) << i;
  EXPECT_EQ(gap->depth(5), 5);
  // And it differs from a model that ignored the shallow tokens' depth (reading zeros).
  auto deep = model.NewCache();
  RunChunk(model, *deep, prompt, 5);
  const auto c = RunChunk(model, *deep, {31}, 5);
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff += std::fabs(a[i] - c[i]);
  EXPECT_GT(diff, 1e-3);
}

policy::DepthPlan Plan(int min_steps, int max_steps, policy::ExitRule rule, double threshold) {
  policy::DepthPlan p;
  p.min_steps = min_steps;
  p.max_steps = max_steps;
  p.class_max_steps = max_steps;
  p.rule = rule;
  p.threshold = threshold;
  p.check_every = 1;
  p.check_from = 1;
  return p;
}

TEST(AdaptiveTest, NoRuleRunsEveryTokenToMaxAndMatchesForwardPasses) {
  testing::RandomModel rm(testing::SmallConfig(), DType::kF32, 22);
  CpuModel model(rm.config(), rm.weights(), nullptr);
  const std::vector<int32_t> prompt = {1, 2, 3, 4};
  AdaptiveOptions ao;
  ao.max_tokens = 6;
  ao.seed = 4;
  auto res = GenerateAdaptive(model, prompt, Plan(3, 3, policy::ExitRule::kNone, 0), ao);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  // The same by hand: full forward passes on a growing cache, greedy.
  std::vector<int32_t> want;
  auto cache = model.NewCache();
  std::vector<int32_t> input = prompt;
  const int64_t v = rm.config().padded_vocab_size;
  for (int i = 0; i < 6; ++i) {
    auto logits = model.Forward(*cache, input, 3, nullptr, 4, 1.0);
    ASSERT_TRUE(logits.ok());
    const float* last = logits->data() + logits->size() - v;
    want.push_back(Argmax({last, static_cast<size_t>(rm.config().vocab_size)}));
    input = {want.back()};
  }
  ASSERT_EQ(res->tokens.size(), want.size());
  for (size_t i = 0; i < res->tokens.size(); ++i) {
    EXPECT_EQ(res->tokens[i].token, want[i]);
    EXPECT_EQ(res->tokens[i].steps, 3);
    EXPECT_EQ(res->tokens[i].reason, policy::ExitReason::kMaxSteps);
  }
  EXPECT_EQ(res->checks.logit_checks, 0);
}

TEST(AdaptiveTest, ConvergenceExitsBetweenMinAndMaxAndIsDeterministic) {
  // The committed tiny checkpoint: its recurrence contracts, so the state settles.
  auto ckpt = model::LoadCheckpoint(std::string(PONDER_TEST_DATA) + "/tiny");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  CpuModel model((*ckpt)->config, (*ckpt)->weights, nullptr);
  const std::vector<int32_t> prompt = {7, 8, 9};
  AdaptiveOptions ao;
  ao.max_tokens = 8;
  for (auto rule : {policy::ExitRule::kLatentDiff, policy::ExitRule::kKl}) {
    const auto plan = Plan(2, 40, rule, rule == policy::ExitRule::kKl ? 1e-3 : 0.05);
    auto a = GenerateAdaptive(model, prompt, plan, ao);
    auto b = GenerateAdaptive(model, prompt, plan, ao);
    ASSERT_TRUE(a.ok() && b.ok());
    int converged = 0;
    for (size_t i = 0; i < a->tokens.size(); ++i) {
      const auto& t = a->tokens[i];
      EXPECT_GE(t.steps, 2);
      EXPECT_LE(t.steps, 40);
      EXPECT_EQ(t.token, b->tokens[i].token);
      EXPECT_EQ(t.steps, b->tokens[i].steps);
      if (t.reason == policy::ExitReason::kConverged) {
        ++converged;
        EXPECT_LT(t.steps, 40);
      }
    }
    // The contracting model settles: tokens exit before the cap.
    EXPECT_GT(converged, 0) << policy::ExitRuleName(rule);
    if (rule == policy::ExitRule::kKl) {
      EXPECT_GT(a->checks.logit_checks, 0);
    } else {
      EXPECT_EQ(a->checks.logit_checks, 0);
      EXPECT_GT(a->checks.latent_checks, 0);
    }
  }
  // A threshold nothing meets runs to max_steps.
  auto never = GenerateAdaptive(model, prompt, Plan(1, 5, policy::ExitRule::kLatentDiff, 0.0), ao);
  ASSERT_TRUE(never.ok());
  for (const auto& t : never->tokens) {
    EXPECT_EQ(t.steps, 5);
    EXPECT_EQ(t.reason, policy::ExitReason::kMaxSteps);
  }
  auto bad = GenerateAdaptive(model, prompt, Plan(5, 2, policy::ExitRule::kNone, 0), ao);
  EXPECT_FALSE(bad.ok());
}

}  // namespace
}  // namespace ponder::exec
