// The Prometheus metrics, in vLLM's testing style: send N known requests, read the
// serialized registry, and assert exact counts, sums and counter increments.
#include "telemetry/prometheus_sink.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>
#include <regex>
#include <sstream>
#include <thread>

#include "exec/engine.h"

namespace ponder::telemetry {
namespace {

// The series of a text exposition: "name{labels}" -> value, labels as written.
struct Series {
  std::string name;
  std::map<std::string, std::string> labels;
  double value;
};

std::vector<Series> Parse(const std::string& text) {
  std::vector<Series> out;
  std::istringstream in(text);
  std::string line;
  static const std::regex series(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$)");
  static const std::regex label(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)")re");
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::smatch m;
    EXPECT_TRUE(std::regex_match(line, m, series)) << "not a series line: " << line;
    if (m.empty()) continue;
    Series s;
    s.name = m[1];
    s.value = std::stod(m[4]);
    const std::string labels = m[3];
    for (auto it = std::sregex_iterator(labels.begin(), labels.end(), label);
         it != std::sregex_iterator(); ++it) {
      s.labels[(*it)[1]] = (*it)[2];
    }
    out.push_back(std::move(s));
  }
  return out;
}

// Sum of the series named `name` whose labels include every pair of `want`; NaN when none.
double Value(const std::string& text, const std::string& name,
             const std::map<std::string, std::string>& want = {}) {
  double sum = 0;
  bool any = false;
  for (const Series& s : Parse(text)) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : want) {
      auto it = s.labels.find(k);
      match = match && it != s.labels.end() && it->second == v;
    }
    if (!match) continue;
    sum += s.value;
    any = true;
  }
  return any ? sum : std::nan("");
}

ProfileInfo Finance() { return {"finance", "USD", {"routine", "risk"}, {"acme", "default"}}; }

RequestRecord Known(const std::string& cls, std::vector<int64_t> steps) {
  RequestRecord r;
  r.profile = "finance";
  r.task_class = cls;
  r.tenant = "acme";
  r.outcome = "stop";
  r.currency = "USD";
  r.prompt_tokens = 7;
  r.generation_tokens = static_cast<int64_t>(steps.size());
  r.token_steps = steps;
  r.exit_reasons.assign(steps.size(), "converged");
  r.exit_reasons.back() = "max_steps";
  r.class_max_steps = 16;
  r.latent_checks = 5;
  r.logit_checks = 2;
  r.phases.prelude.flops = 100;
  r.phases.core.flops = 600;
  r.phases.coda_head.flops = 200;
  r.checks.flops = 100;
  r.device_seconds = 0.5;
  r.cost = 0.25;
  r.queue_seconds = 0.01;
  r.first_token_seconds = 0.02;
  r.e2e_seconds = 0.3;  // a bucket bound: lands in le="0.3"
  r.inter_token_seconds.assign(steps.size() - 1, 0.05);
  return r;
}

TEST(PrometheusSink, KnownRequestsGiveExactCountsAndSums) {
  PrometheusSink sink({.model_name = "ponder-micro"});
  sink.OnProfile(Finance());
  const int n = 3;
  for (int i = 0; i < n; ++i) sink.OnRequest(Known("risk", {16, 4, 8, 16}));
  sink.OnRequest(Known("routine", {2, 2}));
  const std::string t = sink.Serialize();
  const std::map<std::string, std::string> risk = {{"profile", "finance"}, {"task_class", "risk"}};

  EXPECT_EQ(Value(t, "ponder_requests_total", {{"outcome", "stop"}}), n + 1);
  EXPECT_EQ(Value(t, "ponder_requests_total", {{"task_class", "risk"}, {"tenant", "acme"}}), n);
  EXPECT_EQ(Value(t, "ponder_prompt_tokens_total"), 7 * (n + 1));
  EXPECT_EQ(Value(t, "ponder_generation_tokens_total"), 4 * n + 2);
  EXPECT_EQ(Value(t, "ponder_iterations_per_token_count", risk), 4 * n);
  EXPECT_EQ(Value(t, "ponder_iterations_per_token_sum", risk), 44 * n);
  EXPECT_EQ(Value(t, "ponder_iterations_per_token_bucket", {{"task_class", "risk"}, {"le", "4"}}),
            n);  // the 4s (le is inclusive)
  EXPECT_EQ(Value(t, "ponder_iterations_per_token_bucket", {{"task_class", "risk"}, {"le", "8"}}),
            2 * n);
  EXPECT_EQ(Value(t, "ponder_core_iterations_total", risk), 44 * n);
  // Saved against 16: 0 + 12 + 8 + 0 per request; routine 14 + 14.
  EXPECT_EQ(Value(t, "ponder_iterations_saved_total", risk), 20 * n);
  EXPECT_EQ(Value(t, "ponder_iterations_saved_total"), 20 * n + 28);
  EXPECT_EQ(Value(t, "ponder_exit_reasons_total", {{"reason", "converged"}}), 3 * n + 1);
  EXPECT_EQ(Value(t, "ponder_exit_reasons_total", {{"reason", "max_steps"}}), n + 1);
  EXPECT_EQ(Value(t, "ponder_exit_checks_total", {{"kind", "latent"}}), 5 * (n + 1));
  EXPECT_EQ(Value(t, "ponder_exit_checks_total", {{"kind", "logit"}}), 2 * (n + 1));
  EXPECT_EQ(Value(t, "ponder_flops_total", {{"phase", "core"}}), 600 * (n + 1));
  EXPECT_EQ(Value(t, "ponder_flops_total", {{"phase", "exit_checks"}}), 100 * (n + 1));
  // Device time split by FLOPs: core has 600 of 1000.
  EXPECT_DOUBLE_EQ(Value(t, "ponder_device_seconds_total", {{"phase", "core"}}),
                   0.5 * 0.6 * (n + 1));
  EXPECT_DOUBLE_EQ(Value(t, "ponder_device_seconds_total"), 0.5 * (n + 1));
  EXPECT_DOUBLE_EQ(Value(t, "ponder_spend_total", {{"tenant", "acme"}, {"currency", "USD"}}),
                   0.25 * (n + 1));
  EXPECT_EQ(Value(t, "ponder_e2e_request_latency_seconds_count"), n + 1);
  EXPECT_EQ(Value(t, "ponder_e2e_request_latency_seconds_bucket", {{"le", "0.3"}}), n + 1);
  EXPECT_EQ(Value(t, "ponder_e2e_request_latency_seconds_bucket", {{"le", "0.5"}}), n + 1);
  EXPECT_EQ(Value(t, "ponder_time_to_first_token_seconds_count"), n + 1);
  EXPECT_EQ(Value(t, "ponder_inter_token_latency_seconds_count"), 3 * n + 1);
  EXPECT_DOUBLE_EQ(Value(t, "ponder_inter_token_latency_seconds_sum"), 0.05 * (3 * n + 1));
  EXPECT_EQ(Value(t, "ponder_request_queue_time_seconds_count"), n + 1);
  EXPECT_EQ(Value(t, "ponder_request_prompt_tokens_sum"), 7 * (n + 1));
  EXPECT_EQ(Value(t, "ponder_request_generation_tokens_count"), n + 1);
  // Every series carries model_name.
  for (const Series& s : Parse(t)) {
    EXPECT_EQ(s.labels.count("model_name"), 1u) << s.name;
    EXPECT_EQ(s.labels.at("model_name"), "ponder-micro") << s.name;
  }
  // Counters are typed as such and end in _total.
  std::istringstream in(t);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE ", 0) == 0 && line.find(" counter") != std::string::npos) {
      EXPECT_NE(line.find("_total counter"), std::string::npos) << line;
    }
  }
}

TEST(PrometheusSink, CounterIncrementsAcrossScrapes) {
  PrometheusSink sink({.model_name = "m"});
  sink.OnProfile(Finance());
  const std::string before = sink.Serialize();
  EXPECT_EQ(Value(before, "ponder_core_iterations_total"), 0);  // the series exist from the start
  EXPECT_EQ(Value(before, "ponder_spend_total", {{"tenant", "acme"}}), 0);
  sink.OnRequest(Known("risk", {3, 5}));
  const std::string after = sink.Serialize();
  EXPECT_EQ(
      Value(after, "ponder_core_iterations_total") - Value(before, "ponder_core_iterations_total"),
      8);
  EXPECT_EQ(Value(after, "ponder_flops_total") - Value(before, "ponder_flops_total"), 1000);
}

TEST(PrometheusSink, LabelValuesAreBounded) {
  PrometheusSink sink({.model_name = "m"});
  sink.OnProfile(Finance());
  sink.AllowTenant("key-tenant");
  RequestRecord raw = Known("risk", {4});
  raw.tenant = "x\"; drop table";
  raw.task_class = "made-up";
  raw.profile = "finance";
  raw.exit_reasons = {"weird"};
  sink.OnRequest(raw);
  RequestRecord keyed = Known("routine", {4});
  keyed.tenant = "key-tenant";
  keyed.profile = "nope";
  sink.OnRequest(keyed);
  const std::string t = sink.Serialize();
  EXPECT_EQ(Value(t, "ponder_requests_total", {{"tenant", "other"}, {"task_class", "other"}}), 1);
  EXPECT_EQ(Value(t, "ponder_exit_reasons_total", {{"reason", "other"}}), 1);
  EXPECT_EQ(Value(t, "ponder_requests_total", {{"tenant", "key-tenant"}, {"profile", "other"}}), 1);
  EXPECT_EQ(t.find("drop table"), std::string::npos);
  EXPECT_EQ(t.find("made-up"), std::string::npos);
}

TEST(PrometheusSink, RejectionsOnlyCountTheRequest) {
  PrometheusSink sink({.model_name = "m"});
  sink.OnProfile(Finance());
  RequestRecord r;
  r.profile = "finance";
  r.tenant = "acme";
  r.outcome = "rejected";
  sink.OnRequest(r);
  const std::string t = sink.Serialize();
  EXPECT_EQ(Value(t, "ponder_requests_total", {{"outcome", "rejected"}, {"task_class", "none"}}),
            1);
  EXPECT_TRUE(std::isnan(Value(t, "ponder_e2e_request_latency_seconds_count")));
}

TEST(PrometheusSink, GaugesTicksAndBudgets) {
  PrometheusSink sink({.model_name = "m"});
  sink.OnProfile(Finance());
  EXPECT_EQ(Value(sink.Serialize(), "ponder_engine_ready"), 0);
  sink.OnReady(true);
  sink.OnState({.running = 3,
                .waiting = 2,
                .kv_bytes_used = 256,
                .kv_bytes_reserved = 512,
                .kv_bytes_capacity = 1024});
  for (int64_t rows : {1, 4, 4, 32}) sink.OnTick(rows, 0.001);
  sink.OnBudget("finance", "acme", "USD", 12.5);
  sink.OnProfileReload(true);
  sink.OnProfileReload(false);
  sink.OnProfileReload(false);
  const std::string t = sink.Serialize();
  EXPECT_EQ(Value(t, "ponder_profile_reloads_total", {{"outcome", "ok"}}), 1);
  EXPECT_EQ(Value(t, "ponder_profile_reloads_total", {{"outcome", "error"}}), 2);
  EXPECT_EQ(Value(t, "ponder_engine_ready"), 1);
  EXPECT_EQ(Value(t, "ponder_num_requests_running"), 3);
  EXPECT_EQ(Value(t, "ponder_num_requests_waiting"), 2);
  EXPECT_EQ(Value(t, "ponder_kv_cache_used_bytes"), 256);
  EXPECT_EQ(Value(t, "ponder_kv_cache_reserved_bytes"), 512);
  EXPECT_EQ(Value(t, "ponder_kv_cache_capacity_bytes"), 1024);
  EXPECT_EQ(Value(t, "ponder_kv_cache_usage_perc"), 0.25);
  EXPECT_EQ(Value(t, "ponder_scheduler_ticks_total"), 4);
  EXPECT_EQ(Value(t, "ponder_batch_size_count"), 4);
  EXPECT_EQ(Value(t, "ponder_batch_size_sum"), 41);
  EXPECT_EQ(Value(t, "ponder_batch_size_bucket", {{"le", "4"}}), 3);
  EXPECT_EQ(Value(t, "ponder_budget_remaining", {{"tenant", "acme"}, {"currency", "USD"}}), 12.5);
}

TEST(PrometheusSink, Buckets) {
  EXPECT_EQ(PrometheusSink::OneTwoFiveBuckets(100),
            (std::vector<double>{1, 2, 5, 10, 20, 50, 100}));
  EXPECT_EQ(PrometheusSink::OneTwoFiveBuckets(4096),
            (std::vector<double>{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000}));
  EXPECT_EQ(PrometheusSink::TimeToFirstTokenBuckets().size(), 22u);
  EXPECT_EQ(PrometheusSink::InterTokenBuckets().size(), 19u);
  EXPECT_EQ(PrometheusSink::RequestLatencyBuckets().size(), 21u);
}

// The engine end to end: N requests of known prompt length and max_tokens (end of text
// ignored) through ponder-micro, then the registry against the requests' own usage.
TEST(PrometheusSinkEngine, MetricsEqualTheRequestsUsage) {
  auto sink = std::make_shared<PrometheusSink>(PrometheusOptions{.model_name = "ponder-micro"});
  exec::EngineOptions o;
  o.model_dir = std::string(PONDER_SOURCE_DIR) + "/model/zoo/ponder-micro";
  o.profile_paths = {std::string(PONDER_SOURCE_DIR) + "/scenarios/profiles/finance.json"};
  o.backend.threads = 1;
  o.sink = sink;
  auto engine = exec::Engine::Create(o);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  const int n = 5, max_tokens = 6;
  std::vector<exec::RequestHandle> handles;
  for (int i = 0; i < n; ++i) {
    exec::GenerationRequest req;
    req.profile = "finance";
    req.prompt = "+4+8+2*3+3=";
    req.policy.task_class = "market_analysis";
    req.policy.tenant = "acme";
    req.max_tokens = max_tokens;
    req.ignore_eos = true;
    auto h = (*engine)->Submit(req);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    handles.push_back(*h);
  }
  double steps = 0, flops = 0, cost = 0, saved = 0, latent = 0, logit = 0;
  int64_t prompt_len = 0;
  for (auto& h : handles) {
    auto r = h.result.get();
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->usage.completion_tokens, max_tokens);
    prompt_len = r->usage.prompt_tokens;
    for (int64_t s : r->usage.token_steps) {
      steps += static_cast<double>(s);
      saved += static_cast<double>(r->plan.class_max_steps - s);
    }
    flops += r->usage.flops;
    cost += r->usage.cost;
    latent += static_cast<double>(r->usage.latent_checks);
    logit += static_cast<double>(r->usage.logit_checks);
  }
  (*engine)->PublishTelemetry();
  const std::string t = sink->Serialize();
  const std::map<std::string, std::string> cls = {{"task_class", "market_analysis"}};
  EXPECT_EQ(Value(t, "ponder_requests_total", {{"outcome", "length"}, {"tenant", "acme"}}), n);
  EXPECT_EQ(Value(t, "ponder_request_prompt_tokens_count", cls), n);
  EXPECT_EQ(Value(t, "ponder_request_prompt_tokens_sum", cls), n * prompt_len);
  EXPECT_EQ(Value(t, "ponder_request_generation_tokens_sum", cls), n * max_tokens);
  EXPECT_EQ(Value(t, "ponder_iterations_per_token_count", cls), n * max_tokens);
  EXPECT_EQ(Value(t, "ponder_iterations_per_token_sum", cls), steps);
  EXPECT_EQ(Value(t, "ponder_core_iterations_total", cls), steps);
  EXPECT_EQ(Value(t, "ponder_iterations_saved_total", cls), saved);
  EXPECT_EQ(Value(t, "ponder_exit_checks_total", {{"kind", "latent"}}), latent);
  EXPECT_EQ(Value(t, "ponder_exit_checks_total", {{"kind", "logit"}}), logit);
  EXPECT_NEAR(Value(t, "ponder_flops_total"), flops, 1e-9 * flops);
  EXPECT_NEAR(Value(t, "ponder_spend_total", {{"tenant", "acme"}}), cost, 1e-12 + 1e-9 * cost);
  EXPECT_EQ(Value(t, "ponder_time_to_first_token_seconds_count", cls), n);
  EXPECT_EQ(Value(t, "ponder_requests_total", {{"outcome", "length"}}), n);
  EXPECT_EQ(Value(t, "ponder_inter_token_latency_seconds_count", cls), n * (max_tokens - 1));
  EXPECT_EQ(Value(t, "ponder_e2e_request_latency_seconds_count", cls), n);
  EXPECT_GT(Value(t, "ponder_scheduler_ticks_total"), 0);
  EXPECT_GT(Value(t, "ponder_device_seconds_total", {{"phase", "core"}}), 0);
  // Idle afterwards: nothing running, waiting or held.
  EXPECT_EQ(Value(t, "ponder_num_requests_running"), 0);
  EXPECT_EQ(Value(t, "ponder_num_requests_waiting"), 0);
  EXPECT_EQ(Value(t, "ponder_kv_cache_used_bytes"), 0);
  EXPECT_EQ(Value(t, "ponder_kv_cache_reserved_bytes"), 0);
  EXPECT_EQ(Value(t, "ponder_kv_cache_capacity_bytes"), static_cast<double>(o.kv_budget_bytes));
  // A cancelled request (deep, so that it is still running) is counted as such.
  exec::GenerationRequest deep;
  deep.profile = "finance";
  deep.prompt = "+1+1+1+1+1+1+1+1=";
  deep.policy.tenant = "acme";
  deep.policy.min_steps = 1024;
  deep.policy.max_steps = 1024;
  deep.policy.exit_rule = "none";
  deep.policy.deadline_ms = 600000;  // not the class's deadline (sanitizer builds are slow)
  deep.max_tokens = 20;
  deep.ignore_eos = true;
  std::atomic<int> seen{0};
  auto cancelled = (*engine)->Submit(deep, [&](const exec::TokenEvent&) { ++seen; });
  ASSERT_TRUE(cancelled.ok()) << cancelled.status().ToString();
  while (seen.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE((*engine)->Cancel(cancelled->id));
  ASSERT_TRUE(cancelled->result.get().ok());
  EXPECT_EQ(cancelled->result.get()->finish_reason, "cancelled");
  (*engine)->PublishTelemetry();
  const std::string t2 = sink->Serialize();
  EXPECT_EQ(Value(t2, "ponder_requests_total", {{"outcome", "cancelled"}}), 1);
  EXPECT_EQ(Value(t2, "ponder_kv_cache_used_bytes"), 0);
  EXPECT_EQ(Value(t2, "ponder_kv_cache_reserved_bytes"), 0);
}

}  // namespace
}  // namespace ponder::telemetry
