#include "telemetry/prometheus_sink.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>

namespace ponder::telemetry {

namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;
using prometheus::Labels;

constexpr const char* kOther = "other";

}  // namespace

struct PrometheusSink::Impl {
  PrometheusOptions options;
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();

  mutable std::mutex mu;  // the known label values
  std::set<std::string> profiles;
  std::map<std::string, std::set<std::string>> classes;  // by profile
  std::set<std::string> tenants{"default"};

  Family<Counter>* requests;
  Family<Counter>* prompt_tokens;
  Family<Counter>* generation_tokens;
  Family<Counter>* iterations;
  Family<Counter>* saved;
  Family<Counter>* exit_reasons;
  Family<Counter>* exit_checks;
  Family<Counter>* flops;
  Family<Counter>* device_seconds;
  Family<Counter>* spend;
  Counter* ticks;
  Family<Counter>* reloads = nullptr;
  Gauge* ready;
  Gauge* running;
  Gauge* waiting;
  Gauge* kv_used;
  Gauge* kv_reserved;
  Gauge* kv_capacity;
  Gauge* kv_usage;
  Family<Gauge>* budget;
  Family<Histogram>* iterations_per_token;
  Family<Histogram>* ttft;
  Family<Histogram>* itl;
  Family<Histogram>* e2e;
  Family<Histogram>* queue;
  Family<Histogram>* request_prompt_tokens;
  Family<Histogram>* request_generation_tokens;
  Histogram* batch_size;
  std::vector<double> token_buckets;

  Labels Constant() const { return {{"model_name", options.model_name}}; }

  Family<Counter>* NewCounter(const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Labels(Constant()).Register(*registry);
  }
  Family<Gauge>* NewGauge(const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Labels(Constant()).Register(*registry);
  }
  Family<Histogram>* NewHistogram(const char* name, const char* help) {
    return &prometheus::BuildHistogram()
                .Name(name)
                .Help(help)
                .Labels(Constant())
                .Register(*registry);
  }

  // Bounded label values (caller holds mu).
  std::string Profile(const std::string& p) const { return profiles.count(p) ? p : kOther; }
  std::string Class(const std::string& p, const std::string& c) const {
    if (c.empty()) return "none";  // refused before routing
    auto it = classes.find(p);
    return it != classes.end() && it->second.count(c) ? c : kOther;
  }
  std::string Tenant(const std::string& t) const { return tenants.count(t) ? t : kOther; }
  static std::string Outcome(const std::string& o) {
    static const std::set<std::string> known = {"stop", "length", "deadline", "cancelled",
                                                "rejected"};
    return known.count(o) ? o : kOther;
  }
  static std::string Reason(const std::string& r) {
    static const std::set<std::string> known = {"converged", "max_steps", "budget",
                                                "deadline",  "load",      "none"};
    return known.count(r) ? r : kOther;
  }
};

const std::vector<double>& PrometheusSink::TimeToFirstTokenBuckets() {
  static const std::vector<double> b = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                        0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0,
                                        20.0,  40.0,  80.0, 160,  640,  2560};
  return b;
}

const std::vector<double>& PrometheusSink::InterTokenBuckets() {
  static const std::vector<double> b = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                        0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
  return b;
}

const std::vector<double>& PrometheusSink::RequestLatencyBuckets() {
  static const std::vector<double> b = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                                        30,  40,  50,  60,  120, 240, 480, 960, 1920, 7680};
  return b;
}

const std::vector<double>& PrometheusSink::IterationBuckets() {
  static const std::vector<double> b = {1,  2,  3,  4,  6,  8,   12,  16,
                                        24, 32, 48, 64, 96, 128, 192, 256};
  return b;
}

std::vector<double> PrometheusSink::OneTwoFiveBuckets(int64_t max) {
  std::vector<double> b;
  for (double exp = 1; b.empty() || b.back() < static_cast<double>(max); exp *= 10) {
    for (double m : {1.0, 2.0, 5.0}) {
      if (m * exp > static_cast<double>(max)) return b.empty() ? std::vector<double>{1} : b;
      b.push_back(m * exp);
    }
  }
  return b;
}

PrometheusSink::PrometheusSink(const PrometheusOptions& options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.options = options;
  m.requests = m.NewCounter(
      "ponder_requests_total",
      "Requests that ended, by outcome (stop, length, deadline, cancelled, rejected).");
  m.prompt_tokens = m.NewCounter("ponder_prompt_tokens_total", "Prompt tokens prefilled.");
  m.generation_tokens = m.NewCounter("ponder_generation_tokens_total", "Tokens generated.");
  m.iterations = m.NewCounter("ponder_core_iterations_total",
                              "Core-block iterations run for generated tokens.");
  m.saved = m.NewCounter(
      "ponder_iterations_saved_total",
      "Core iterations not spent against the class maximum (class max - steps, per token).");
  m.exit_reasons = m.NewCounter("ponder_exit_reasons_total", "Generated tokens by exit reason.");
  m.exit_checks = m.NewCounter("ponder_exit_checks_total",
                               "Exit checks run (latent: state change; logit: coda + head).");
  m.flops = m.NewCounter("ponder_flops_total",
                         "Floating-point operations by phase, from the cost model of the "
                         "loaded config (a multiply-add is 2).");
  m.device_seconds = m.NewCounter(
      "ponder_device_seconds_total",
      "Device time by phase: each request's share of its ticks, split by the phases' FLOPs.");
  m.spend = m.NewCounter("ponder_spend_total",
                         "Spend in the profile's currency (label currency), by tenant.");
  m.ticks = &m.NewCounter("ponder_scheduler_ticks_total",
                          "Scheduler ticks (one core iteration "
                          "of every running sequence).")
                 ->Add({});
  m.reloads =
      m.NewCounter("ponder_profile_reloads_total",
                   "Reloads of the profile files (outcome ok, or error: the old profiles kept).");
  m.reloads->Add({{"outcome", "ok"}});
  m.reloads->Add({{"outcome", "error"}});
  m.ready =
      &m.NewGauge("ponder_engine_ready", "1 once the model is loaded and requests are served.")
           ->Add({});
  m.running = &m.NewGauge("ponder_num_requests_running", "Sequences in the batch.")->Add({});
  m.waiting = &m.NewGauge("ponder_num_requests_waiting", "Requests queued for admission.")->Add({});
  m.kv_used =
      &m.NewGauge("ponder_kv_cache_used_bytes", "KV cache held by running sequences.")->Add({});
  m.kv_reserved = &m.NewGauge("ponder_kv_cache_reserved_bytes",
                              "KV cache reserved by admission (each sequence's worst case).")
                       ->Add({});
  m.kv_capacity =
      &m.NewGauge("ponder_kv_cache_capacity_bytes", "KV cache budget of the engine.")->Add({});
  m.kv_usage =
      &m.NewGauge("ponder_kv_cache_usage_perc", "KV cache used over capacity (1 = 100%).")->Add({});
  m.budget = m.NewGauge("ponder_budget_remaining",
                        "Budget left in the tenant's current window (label currency).");
  m.iterations_per_token =
      m.NewHistogram("ponder_iterations_per_token", "Core iterations per generated token.");
  m.ttft = m.NewHistogram("ponder_time_to_first_token_seconds",
                          "Time from submission to the first generated token.");
  m.itl = m.NewHistogram("ponder_inter_token_latency_seconds", "Time between successive tokens.");
  m.e2e = m.NewHistogram("ponder_e2e_request_latency_seconds",
                         "Time from submission to the request's end.");
  m.queue = m.NewHistogram("ponder_request_queue_time_seconds",
                           "Time from submission to admission into the batch.");
  m.request_prompt_tokens =
      m.NewHistogram("ponder_request_prompt_tokens", "Prompt tokens per request.");
  m.request_generation_tokens =
      m.NewHistogram("ponder_request_generation_tokens", "Generated tokens per request.");
  m.batch_size = &m.NewHistogram("ponder_batch_size", "Sequences iterated per scheduler tick.")
                      ->Add({}, Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256});
  m.token_buckets = OneTwoFiveBuckets(std::max<int64_t>(1, options.max_model_len));
}

PrometheusSink::~PrometheusSink() = default;

void PrometheusSink::AllowTenant(const std::string& tenant) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->tenants.insert(tenant);
}

void PrometheusSink::OnProfile(const ProfileInfo& profile) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.profiles.insert(profile.name);
  auto& classes = m.classes[profile.name];
  classes.insert(profile.task_classes.begin(), profile.task_classes.end());
  m.tenants.insert(profile.tenants.begin(), profile.tenants.end());
  // Series that exist from the start, so that rates and sums read 0 rather than nothing.
  for (const std::string& c : profile.task_classes) {
    const Labels l = {{"profile", profile.name}, {"task_class", c}};
    m.iterations->Add(l);
    m.saved->Add(l);
  }
  for (const char* phase : {"prelude", "core", "coda_head", "exit_checks"}) {
    m.flops->Add({{"profile", profile.name}, {"phase", phase}});
    m.device_seconds->Add({{"profile", profile.name}, {"phase", phase}});
  }
  for (const std::string& t : profile.tenants) {
    m.spend->Add({{"profile", profile.name}, {"tenant", t}, {"currency", profile.currency}});
  }
}

void PrometheusSink::OnRequest(const RequestRecord& r) {
  Impl& m = *impl_;
  std::string profile, cls, tenant;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    profile = m.Profile(r.profile);
    cls = m.Class(r.profile, r.task_class);
    tenant = m.Tenant(r.tenant);
  }
  const std::string outcome = Impl::Outcome(r.outcome);
  m.requests
      ->Add({{"profile", profile}, {"task_class", cls}, {"tenant", tenant}, {"outcome", outcome}})
      .Increment();
  if (outcome == "rejected") return;
  const Labels pct = {{"profile", profile}, {"task_class", cls}, {"tenant", tenant}};
  m.prompt_tokens->Add(pct).Increment(static_cast<double>(r.prompt_tokens));
  m.generation_tokens->Add(pct).Increment(static_cast<double>(r.generation_tokens));

  const Labels pc = {{"profile", profile}, {"task_class", cls}};
  Histogram& per_token = m.iterations_per_token->Add(pc, IterationBuckets());
  double steps = 0, saved = 0;
  for (int64_t s : r.token_steps) {
    per_token.Observe(static_cast<double>(s));
    steps += static_cast<double>(s);
    saved += static_cast<double>(std::max<int64_t>(0, r.class_max_steps - s));
  }
  m.iterations->Add(pc).Increment(steps);
  m.saved->Add(pc).Increment(saved);
  std::map<std::string, double> reasons;
  for (const std::string& reason : r.exit_reasons) reasons[Impl::Reason(reason)] += 1;
  for (const auto& [reason, n] : reasons) {
    m.exit_reasons->Add({{"profile", profile}, {"task_class", cls}, {"reason", reason}})
        .Increment(n);
  }
  m.exit_checks->Add({{"profile", profile}, {"task_class", cls}, {"kind", "latent"}})
      .Increment(static_cast<double>(r.latent_checks));
  m.exit_checks->Add({{"profile", profile}, {"task_class", cls}, {"kind", "logit"}})
      .Increment(static_cast<double>(r.logit_checks));

  const double phase_flops[4] = {r.phases.prelude.flops, r.phases.core.flops,
                                 r.phases.coda_head.flops, r.checks.flops};
  const char* phase_names[4] = {"prelude", "core", "coda_head", "exit_checks"};
  double all = 0;
  for (double f : phase_flops) all += f;
  for (int i = 0; i < 4; ++i) {
    const Labels l = {{"profile", profile}, {"phase", phase_names[i]}};
    m.flops->Add(l).Increment(phase_flops[i]);
    m.device_seconds->Add(l).Increment(all > 0 ? r.device_seconds * phase_flops[i] / all : 0.0);
  }
  m.spend->Add({{"profile", profile}, {"tenant", tenant}, {"currency", r.currency}})
      .Increment(std::max(0.0, r.cost));

  if (r.first_token_seconds >= 0) {
    m.ttft->Add(pc, TimeToFirstTokenBuckets()).Observe(r.first_token_seconds);
  }
  Histogram& itl = m.itl->Add(pc, InterTokenBuckets());
  for (double s : r.inter_token_seconds) itl.Observe(s);
  m.e2e->Add(pc, RequestLatencyBuckets()).Observe(r.e2e_seconds);
  m.queue->Add(pc, RequestLatencyBuckets()).Observe(r.queue_seconds);
  m.request_prompt_tokens->Add(pc, m.token_buckets).Observe(static_cast<double>(r.prompt_tokens));
  m.request_generation_tokens->Add(pc, m.token_buckets)
      .Observe(static_cast<double>(r.generation_tokens));
}

void PrometheusSink::OnTick(int64_t rows, double /*seconds*/) {
  impl_->ticks->Increment();
  impl_->batch_size->Observe(static_cast<double>(rows));
}

void PrometheusSink::OnState(const EngineState& s) {
  Impl& m = *impl_;
  m.running->Set(static_cast<double>(s.running));
  m.waiting->Set(static_cast<double>(s.waiting));
  m.kv_used->Set(static_cast<double>(s.kv_bytes_used));
  m.kv_reserved->Set(static_cast<double>(s.kv_bytes_reserved));
  m.kv_capacity->Set(static_cast<double>(s.kv_bytes_capacity));
  m.kv_usage->Set(s.kv_bytes_capacity > 0 ? static_cast<double>(s.kv_bytes_used) /
                                                static_cast<double>(s.kv_bytes_capacity)
                                          : 0.0);
}

void PrometheusSink::OnBudget(const std::string& profile, const std::string& tenant,
                              const std::string& currency, double remaining) {
  Impl& m = *impl_;
  std::string p, t;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    p = m.Profile(profile);
    t = m.Tenant(tenant);
  }
  m.budget->Add({{"profile", p}, {"tenant", t}, {"currency", currency}}).Set(remaining);
}

void PrometheusSink::OnReady(bool ready) { impl_->ready->Set(ready ? 1.0 : 0.0); }

void PrometheusSink::OnProfileReload(bool ok) {
  impl_->reloads->Add({{"outcome", ok ? "ok" : "error"}}).Increment();
}

std::string PrometheusSink::Serialize() const {
  return prometheus::TextSerializer{}.Serialize(impl_->registry->Collect());
}

}  // namespace ponder::telemetry
