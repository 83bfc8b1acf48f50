// The embedding API: planning, continuous depth batching on the worker thread, admission,
// backpressure, cancellation, deadlines, budgets, profile reload.
#include "exec/engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "exec/cpu/cpu_model.h"
#include "model/checkpoint.h"
#include "model/task_protocol.h"

namespace ponder::exec {
namespace {

const std::string kModel = std::string(PONDER_SOURCE_DIR) + "/model/zoo/ponder-micro";
const std::string kProfiles = std::string(PONDER_SOURCE_DIR) + "/scenarios/profiles/";

EngineOptions Options() {
  EngineOptions o;
  o.model_dir = kModel;
  o.profile_paths = {kProfiles + "finance.json", kProfiles + "education.json"};
  o.backend.threads = 1;
  return o;
}

GenerationRequest Req(const std::string& prompt, const std::string& cls = "") {
  GenerationRequest r;
  r.prompt = prompt;
  r.profile = "finance";
  if (!cls.empty()) r.policy.task_class = cls;
  return r;
}

const std::vector<std::pair<std::string, std::string>>& Prompts() {
  static const std::vector<std::pair<std::string, std::string>> p = {
      {"+8*3*7+6+7+7+4+3+0+3+1=", "risk_assessment"},
      {"z6v0l0n2c2?v", "routine_transaction"},
      {"+4+8+2*3+3=", "market_analysis"},
      {"w0x6?w", "routine_transaction"},
      {"+7+9+0+9*9*9=", "risk_assessment"},
      {"+1*3+5+2*7+4=", "market_analysis"},
  };
  return p;
}

TEST(EngineTest, ConcurrentRequestsGetTheirBatchOneResults) {
  auto engine = Engine::Create(Options());
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  // Batch-1 references with the same plans, outside the engine.
  auto ckpt = model::LoadCheckpoint(kModel);
  ASSERT_TRUE(ckpt.ok());
  cpu::CpuModel model((*ckpt)->config, (*ckpt)->weights, nullptr);
  auto proto = model::ProtocolOf(*(*ckpt)->tokenizer, "test");
  ASSERT_TRUE(proto.ok());
  std::vector<RequestHandle> handles;
  for (int copy = 0; copy < 2; ++copy) {
    for (const auto& [prompt, cls] : Prompts()) {
      auto req = Req(prompt, cls);
      req.seed = copy;
      auto h = (*engine)->Submit(req);
      ASSERT_TRUE(h.ok()) << h.status().ToString();
      handles.push_back(*h);
    }
  }
  for (size_t i = 0; i < handles.size(); ++i) {
    const auto& [prompt, cls] = Prompts()[i % Prompts().size()];
    auto got = handles[i].result.get();
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->plan.task_class, cls);
    auto ids = model::EncodeTaskPrompt(*(*ckpt)->tokenizer, *proto, prompt);
    ASSERT_TRUE(ids.ok());
    AdaptiveOptions ao;
    ao.max_tokens = got->plan.sampling.max_tokens;
    ao.seed = i / Prompts().size();
    ao.stop_ids = {proto->eos};
    auto kv = KvStrategy::Parse(got->plan.kv_strategy);
    ASSERT_TRUE(kv.ok());
    ao.kv = *kv;
    auto want = GenerateAdaptive(model, *ids, got->plan, ao);
    ASSERT_TRUE(want.ok());
    ASSERT_EQ(got->tokens.size(), want->tokens.size()) << prompt;
    for (size_t t = 0; t < want->tokens.size(); ++t) {
      EXPECT_EQ(got->tokens[t].token, want->tokens[t].token) << prompt;
      EXPECT_EQ(got->tokens[t].steps, want->tokens[t].steps) << prompt;
      EXPECT_EQ(got->tokens[t].reason, want->tokens[t].reason) << prompt;
    }
    EXPECT_EQ(got->finish_reason, "stop");
    EXPECT_EQ(got->usage.completion_tokens, static_cast<int64_t>(want->tokens.size()));
    EXPECT_GT(got->usage.flops, 0.0);
    EXPECT_GE(got->usage.cost, 0.0);
    EXPECT_EQ(got->usage.currency, "USD");
  }
  const EngineStats s = (*engine)->Stats();
  EXPECT_EQ(s.completed, static_cast<int64_t>(handles.size()));
  EXPECT_EQ(s.active, 0);
  EXPECT_EQ(s.kv_bytes_reserved, 0u);
}

TEST(EngineTest, FullQueueIsResourceExhaustedAndBadInputIsInvalid) {
  auto o = Options();
  o.max_active = 1;
  o.max_queue = 1;
  auto engine = Engine::Create(o);
  ASSERT_TRUE(engine.ok());
  auto slow = Req("qwerty|", "risk_assessment");
  slow.max_tokens = 60;
  slow.ignore_eos = true;
  std::vector<RequestHandle> ok;
  int exhausted = 0;
  for (int i = 0; i < 4; ++i) {
    auto h = (*engine)->Submit(slow);
    if (h.ok()) {
      ok.push_back(*h);
    } else {
      EXPECT_EQ(h.status().code(), StatusCode::kResourceExhausted) << h.status().ToString();
      ++exhausted;
    }
  }
  EXPECT_GE(exhausted, 1);
  for (auto& h : ok) (*engine)->Cancel(h.id);
  EXPECT_FALSE((*engine)->Submit(Req("")).ok());
  auto unknown = Req("abc|");
  unknown.profile = "nope";
  EXPECT_EQ((*engine)->Submit(unknown).status().code(), StatusCode::kNotFound);
  auto bad_class = Req("abc|", "no_such_class");
  EXPECT_EQ((*engine)->Submit(bad_class).status().code(), StatusCode::kInvalidArgument);
  auto too_many = Req("abc|");
  too_many.max_tokens = 100000;
  EXPECT_EQ((*engine)->Submit(too_many).status().code(), StatusCode::kInvalidArgument);
}

TEST(EngineTest, CancelEndsTheRequestAndFreesItsCache) {
  auto engine = Engine::Create(Options());
  ASSERT_TRUE(engine.ok());
  auto req = Req("+1+2+3+4+5+6+7=", "risk_assessment");
  req.max_tokens = 60;
  req.ignore_eos = true;
  req.policy.exit_rule = "none";
  std::atomic<int> seen{0};
  auto h = (*engine)->Submit(req, [&](const TokenEvent&) { ++seen; });
  ASSERT_TRUE(h.ok());
  while (seen.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const EngineStats during = (*engine)->Stats();
  EXPECT_GT(during.kv_bytes_reserved, 0u);
  // Held: whole pages (16 positions x K and V of width 128 in f32), within the reservation.
  EXPECT_GT(during.kv_bytes_used, 0u);
  EXPECT_EQ(during.kv_bytes_used % (2 * KvPagePool::kPageRows * 128 * sizeof(float)), 0u);
  EXPECT_LE(during.kv_bytes_used, during.kv_bytes_reserved);
  EXPECT_EQ(during.kv_bytes_free, during.kv_bytes_capacity - during.kv_bytes_reserved);
  EXPECT_TRUE((*engine)->Cancel(h->id));
  auto r = h->result.get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->finish_reason, "cancelled");
  EXPECT_GE(r->tokens.size(), 2u);
  EXPECT_LT(r->tokens.size(), 60u);
  const EngineStats s = (*engine)->Stats();
  EXPECT_EQ(s.active, 0);
  EXPECT_EQ(s.kv_bytes_used, 0u);
  EXPECT_EQ(s.kv_bytes_reserved, 0u);
  EXPECT_EQ(s.kv_bytes_free, s.kv_bytes_capacity);
  EXPECT_EQ(s.cancelled, 1);
  EXPECT_FALSE((*engine)->Cancel(h->id));
}

TEST(EngineTest, DeadlineEndsTheRequestWithWhatItHas) {
  auto engine = Engine::Create(Options());
  ASSERT_TRUE(engine.ok());
  auto req = Req("+1+2+3+4+5+6+7=", "risk_assessment");
  req.max_tokens = 60;
  req.policy.exit_rule = "none";
  req.policy.deadline_ms = 30;
  req.ignore_eos = true;
  auto h = (*engine)->Submit(req);
  ASSERT_TRUE(h.ok());
  auto r = h->result.get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->finish_reason, "deadline");
  EXPECT_LT(r->tokens.size(), 60u);
  EXPECT_LT(r->usage.total_seconds, 1.0);
}

TEST(EngineTest, PriorityOrdersTheQueue) {
  auto o = Options();
  o.max_active = 1;
  auto engine = Engine::Create(o);
  ASSERT_TRUE(engine.ok());
  std::mutex mu;
  std::vector<std::string> order;
  auto note = [&](const std::string& who) {
    return [&, who](const TokenEvent&) {
      std::lock_guard<std::mutex> lock(mu);
      if (order.empty() || order.back() != who) order.push_back(who);
    };
  };
  auto blocker = Req("+1+2+3=", "risk_assessment");  // priority 3
  auto low = Req("+4+5=", "risk_assessment");        // priority 3
  auto high = Req("w0x6?w", "routine_transaction");  // priority 7
  // The blocker runs deep enough to still hold the only slot when the others arrive.
  blocker.policy.min_steps = 512;
  blocker.policy.max_steps = 512;
  blocker.policy.exit_rule = "none";
  blocker.policy.deadline_ms = 600000;
  auto hb = (*engine)->Submit(blocker, note("blocker"));
  for (bool started = false; !started;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::lock_guard<std::mutex> lock(mu);
    started = !order.empty();
  }
  auto hl = (*engine)->Submit(low, note("low"));
  auto hh = (*engine)->Submit(high, note("high"));
  ASSERT_TRUE(hb.ok() && hl.ok() && hh.ok());
  hb->result.wait();
  hl->result.wait();
  hh->result.wait();
  ASSERT_EQ(order.size(), 3u);
  EXPECT_EQ(order[1], "high");
  EXPECT_EQ(order[2], "low");
}

TEST(EngineTest, BudgetRejectAndDegradeAndReloadKeepsAGoodProfile) {
  const auto dir = std::filesystem::temp_directory_path() / "ponder-engine-test";
  std::filesystem::create_directories(dir);
  const auto path = (dir / "tiny-budget.json").string();
  auto write = [&](const std::string& text) { std::ofstream(path) << text; };
  write(R"({
    "name": "tiny", "currency": "EUR", "pricing": {"per_device_second": 1000.0, "per_tflop": 0.0},
    "default_class": "c",
    "task_classes": [{"name": "c", "min_steps": 2, "max_steps": 16, "exit": {"rule": "none"}}],
    "tenants": {"default": {"budget": 0.000001, "window_seconds": 3600, "on_exhausted": "degrade"},
                "strict": {"budget": 0.000001, "window_seconds": 3600, "on_exhausted": "reject"}}
  })");
  auto o = Options();
  o.profile_paths = {path};
  auto engine = Engine::Create(o);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  GenerationRequest r;
  r.prompt = "abc|";
  r.profile = "tiny";
  for (const std::string tenant : {"default", "strict"}) {
    r.policy.tenant = tenant;
    auto first = (*engine)->Submit(r);  // within budget: spends it
    ASSERT_TRUE(first.ok());
    auto done = first->result.get();
    ASSERT_TRUE(done.ok());
    EXPECT_GT(done->usage.cost, 0.0);
    EXPECT_EQ(done->usage.currency, "EUR");
    EXPECT_EQ((*engine)->RemainingBudget("tiny", tenant), 0.0);
  }
  r.policy.tenant = "default";
  auto degraded = (*engine)->Submit(r);
  ASSERT_TRUE(degraded.ok());
  EXPECT_EQ(degraded->plan.max_steps, 2);
  auto d = degraded->result.get();
  ASSERT_TRUE(d.ok());
  for (const auto& t : d->tokens) EXPECT_EQ(t.steps, 2);
  r.policy.tenant = "strict";
  auto rejected = (*engine)->Submit(r);
  ASSERT_FALSE(rejected.ok());
  EXPECT_EQ(rejected.status().code(), StatusCode::kResourceExhausted);
  // An invalid file does not replace the loaded profile.
  write(R"({"name": "tiny", "task_classes": [{"name": "c", "min_steps": 9, "max_steps": 3}]})");
  const Status reload = (*engine)->ReloadProfiles();
  EXPECT_FALSE(reload.ok());
  EXPECT_NE(reload.message().find("tiny-budget.json"), std::string::npos) << reload.message();
  auto still = (*engine)->Profile("tiny");
  ASSERT_TRUE(still.ok());
  EXPECT_EQ((*still)->task_classes[0].max_steps, 16);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ponder::exec
