// Replay's latency, FLOPs and cost per group: FLOPs equal the cost model's sum over the
// requests' passes (and the multiply-adds the forward pass did), costs are the profile's
// prices times the reported quantities, and the JSON and text reports carry them.

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "exec/cost.h"
#include "exec/cpu/cpu_model.h"
#include "exec/cpu/madd_counter.h"
#include "model/checkpoint.h"
#include "policy/profile.h"
#include "scenarios/replay.h"
#include "telemetry/cost_model.h"
#include "tests/scenarios/synthetic_items.h"

namespace ponder::scenarios {
namespace {

class ReplayUsageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ckpt = model::LoadCheckpoint(std::string(PONDER_TEST_DATA) + "/tiny");
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    ckpt_ = std::move(*ckpt);
    model_ = std::make_unique<exec::cpu::CpuModel>(ckpt_->config, ckpt_->weights, nullptr);
    auto profile =
        policy::LoadProfile(std::string(PONDER_SOURCE_DIR) + "/scenarios/profiles/finance.json");
    ASSERT_TRUE(profile.ok()) << profile.status().ToString();
    profile_ = std::move(*profile);
  }
  // Prompt length under the replay protocol: <|begin_text|> + the encoded prompt.
  int64_t PromptRows(const std::string& prompt) const {
    auto ids = ckpt_->tokenizer->Encode(prompt, false);
    EXPECT_TRUE(ids.ok());
    return static_cast<int64_t>(ids->size()) + 1;
  }
  std::vector<WorkloadItem> Items(const std::vector<std::string>& classes) const {
    return testing::SyntheticItems(classes, {"+4*3=", "abc|", "The answer", "x"});
  }
  std::unique_ptr<model::Checkpoint> ckpt_;
  std::unique_ptr<exec::cpu::CpuModel> model_;
  policy::DomainProfile profile_;
};

double RelErr(double a, double b) { return std::abs(a - b) / std::abs(b); }

TEST_F(ReplayUsageTest, FixedDepthFlopsAreTheCostModelsSum) {
  const auto items = Items({"a", "b"});
  ReplayOptions ro;
  ro.steps = 3;
  ro.max_tokens = 4;
  ro.batch = 3;  // batches of 3, 3, 2
  exec::cpu::ScopedMaddCounter counter;
  auto report = Replay(*model_, *ckpt_->tokenizer, items, ro);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  const double measured = 2.0 * static_cast<double>(counter.Read().total());
  const telemetry::CostModel cm(exec::DimsOf(ckpt_->config));
  double expected = 0, prefill = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const int64_t t = report->items[i].tokens;
    ASSERT_GE(t, 1);
    const std::vector<int64_t> decode(t - 1, 3);
    const auto rc =
        cm.Request(telemetry::CostModel::FixedPasses(PromptRows(items[i].prompt), 3, decode));
    expected += rc.total().flops;
    prefill += rc.prefill.flops;
  }
  const Score& total = report->total;
  EXPECT_NEAR(total.flops, expected, 1e-9 * expected);
  EXPECT_NEAR(total.prefill_flops, prefill, 1e-9 * prefill);
  EXPECT_DOUBLE_EQ(total.check_flops, 0.0);
  EXPECT_EQ(total.logit_checks + total.latent_checks, 0);
  EXPECT_LT(RelErr(total.flops, measured), 1e-9);  // and what the forward passes did
  EXPECT_DOUBLE_EQ(total.flops_per_token(), total.flops / total.tokens);
  // Groups add up to the total.
  double class_flops = 0, class_device = 0;
  for (const auto& [name, s] : report->classes) {
    class_flops += s.flops;
    class_device += s.device_seconds;
  }
  EXPECT_NEAR(class_flops, total.flops, 1e-9 * total.flops);
  EXPECT_NEAR(class_device, total.device_seconds, 1e-9 * total.device_seconds);
  // Latency: one sample per request; a batch's requests share its wall time, so the
  // device seconds (the batches' wall times) are at most the summed latencies.
  ASSERT_EQ(total.request_seconds.size(), items.size());
  EXPECT_GT(total.seconds, 0.0);
  EXPECT_GT(total.device_seconds, 0.0);
  EXPECT_LE(total.device_seconds, total.seconds * (1 + 1e-12));
  EXPECT_DOUBLE_EQ(total.request_seconds[0], total.request_seconds[1]);  // same batch
  EXPECT_GE(total.SecondsQuantile(0.95), total.SecondsQuantile(0.5));
  EXPECT_DOUBLE_EQ(total.mean_seconds_per_token(), total.seconds / total.tokens);
  // No profile: no pricing, no cost in the JSON.
  EXPECT_FALSE(report->pricing.has_value());
  const auto j = nlohmann::json::parse(ReportJson(*report, 3, false));
  EXPECT_FALSE(j.contains("cost"));
  EXPECT_FALSE(j["classes"]["a"].contains("cost"));
  EXPECT_DOUBLE_EQ(j["flops"].get<double>(), total.flops);
}

TEST_F(ReplayUsageTest, ProfileFlopsMatchTheForwardPassAndCostIsPriceTimesUse) {
  profile_.pricing.per_device_second = 0.5;
  profile_.pricing.per_tflop = 2000.0;
  ReplayOptions ro;
  ro.max_tokens = 3;
  ro.profile = &profile_;
  // Latent (routine_transaction) and ungated logit (risk_assessment) rules: the cost
  // model's count equals the kernels' exactly; the latent checks' reductions are the
  // only FLOPs outside the kernels.
  {
    const auto items = Items({"routine_transaction", "risk_assessment"});
    exec::cpu::ScopedMaddCounter counter;
    auto report = Replay(*model_, *ckpt_->tokenizer, items, ro);
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    const double measured = 2.0 * static_cast<double>(counter.Read().total());
    const Score& t = report->total;
    const double latent_flops = t.latent_checks * 4.0 * ckpt_->config.n_embd;
    EXPECT_GT(t.latent_checks, 0);
    EXPECT_GT(t.logit_checks, 0);
    EXPECT_LT(RelErr(t.flops - latent_flops, measured), 1e-9);
    EXPECT_GT(report->classes.at("risk_assessment").flops_per_token(),
              report->classes.at("routine_transaction").flops_per_token());
    // Profile mode: requests run one at a time, device time = latency.
    EXPECT_NEAR(t.device_seconds, t.seconds, 1e-12);
    // Cost = price x quantities, per group, in the JSON too.
    ASSERT_TRUE(report->pricing.has_value());
    const auto j = nlohmann::json::parse(ReportJson(*report, 0, false));
    EXPECT_EQ(j["currency"], "USD");
    EXPECT_DOUBLE_EQ(j["pricing"]["per_tflop"].get<double>(), 2000.0);
    for (const auto* g : {&j, &j["classes"]["routine_transaction"], &j["families"]["f"]}) {
      const double cost =
          0.5 * (*g)["device_seconds"].get<double>() + 2000.0 * (*g)["flops"].get<double>() / 1e12;
      EXPECT_NEAR((*g)["cost"].get<double>(), cost, 1e-12 * cost);
      EXPECT_NEAR((*g)["cost_per_request"].get<double>(), cost / (*g)["requests"].get<double>(),
                  1e-12 * cost);
      EXPECT_NEAR((*g)["cost_per_token"].get<double>(), cost / (*g)["tokens"].get<double>(),
                  1e-12 * cost);
      for (const char* key : {"accuracy",
                              "requests",
                              "mean_steps_per_token",
                              "tokens",
                              "prompt_tokens",
                              "p50_steps_per_token",
                              "p95_steps_per_token",
                              "exit_reasons",
                              "seconds",
                              "mean_seconds_per_request",
                              "p95_seconds_per_request",
                              "mean_seconds_per_token",
                              "p95_seconds_per_token",
                              "device_seconds",
                              "flops",
                              "flops_per_token",
                              "prefill_flops",
                              "decode_flops",
                              "check_flops",
                              "logit_checks",
                              "latent_checks"}) {
        EXPECT_TRUE(g->contains(key)) << key;
      }
      EXPECT_NEAR((*g)["flops"].get<double>(),
                  (*g)["prefill_flops"].get<double>() + (*g)["decode_flops"].get<double>() +
                      (*g)["check_flops"].get<double>(),
                  1e-9 * (*g)["flops"].get<double>());
    }
    int64_t exits = 0;
    for (const auto& [reason, n] : j["exit_reasons"].items()) exits += n.get<int64_t>();
    EXPECT_EQ(exits, j["tokens"].get<int64_t>());
  }
  // A gated rule (market_analysis): check counts exact, FLOPs close.
  {
    const auto items = Items({"market_analysis"});
    exec::cpu::ScopedMaddCounter counter;
    auto report = Replay(*model_, *ckpt_->tokenizer, items, ro);
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    const double measured = 2.0 * static_cast<double>(counter.Read().total());
    const Score& t = report->total;
    EXPECT_LT(RelErr(t.flops - t.latent_checks * 4.0 * ckpt_->config.n_embd, measured), 0.05);
  }
}

TEST_F(ReplayUsageTest, TextTablesFitOneHundredColumns) {
  ReplayOptions ro;
  ro.max_tokens = 2;
  ro.profile = &profile_;
  auto items = Items({"routine_transaction", "market_analysis", "risk_assessment"});
  auto report = Replay(*model_, *ckpt_->tokenizer, items, ro);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  // Every exit reason present, to size the widest table.
  for (const char* r : {"converged", "max_steps", "budget", "deadline", "load"}) {
    report->classes["routine_transaction"].exits[r] += 0;
  }
  const std::string text = ReportText(*report, "finance.jsonl (profile finance)");
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) EXPECT_LE(line.size(), 100u) << line;
  for (const char* needle : {"risk_assessment", "market_analysis", "routine_transaction", "USD",
                             "FLOP/tok", "p95 ms", "dline", "compute", "cost"}) {
    EXPECT_NE(text.find(needle), std::string::npos) << needle;
  }
  // Without a profile: no cost columns.
  ReplayOptions fixed;
  fixed.steps = 2;
  fixed.max_tokens = 2;
  auto plain = Replay(*model_, *ckpt_->tokenizer, items, fixed);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(ReportText(*plain, "w (r=2)").find("USD"), std::string::npos);
}

}  // namespace
}  // namespace ponder::scenarios
