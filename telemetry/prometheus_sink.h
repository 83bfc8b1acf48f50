#pragma once

// PrometheusSink: the engine's telemetry in a prometheus-cpp registry, serialized in the
// Prometheus text format for `GET /metrics`. Conventions follow vLLM (reference/serving.md
// §1.1): seconds and bytes as units, `_total` written on counters, vLLM's latency buckets,
// and the constant label `model_name` on every series.
//
// Counters
//   ponder_requests_total{profile,task_class,tenant,outcome}
//       outcome: stop | length | deadline | cancelled | rejected
//   ponder_prompt_tokens_total, ponder_generation_tokens_total{profile,task_class,tenant}
//   ponder_core_iterations_total{profile,task_class}        iterations of generated tokens
//   ponder_iterations_saved_total{profile,task_class}       class max - steps, per token
//   ponder_exit_reasons_total{profile,task_class,reason}    tokens by exit reason
//   ponder_exit_checks_total{profile,task_class,kind}       kind: latent | logit
//   ponder_flops_total{profile,phase}                       phase: prelude | core |
//   ponder_device_seconds_total{profile,phase}                     coda_head | exit_checks
//   ponder_spend_total{profile,tenant,currency}             cost in the profile's currency
//   ponder_scheduler_ticks_total
//   ponder_profile_reloads_total{outcome}                   outcome: ok | error
// Gauges
//   ponder_engine_ready, ponder_num_requests_running, ponder_num_requests_waiting,
//   ponder_kv_cache_used_bytes, ponder_kv_cache_reserved_bytes, ponder_kv_cache_capacity_bytes,
//   ponder_kv_cache_usage_perc (used / capacity),
//   ponder_budget_remaining{profile,tenant,currency}
// Histograms
//   ponder_iterations_per_token{profile,task_class}         one observation per token
//   ponder_time_to_first_token_seconds, ponder_inter_token_latency_seconds,
//   ponder_e2e_request_latency_seconds, ponder_request_queue_time_seconds,
//   ponder_request_prompt_tokens, ponder_request_generation_tokens{profile,task_class}
//   ponder_batch_size                                       sequences per scheduler tick
//
// Label values are bounded: profiles, classes and tenants that a loaded profile names (or
// that AllowTenant added, e.g. the server's API-key tenants, and "default"); anything else
// is written as "other", so raw input never becomes a series.
//
// Device-seconds by phase: a request's measured device time (its share of each tick it ran
// in) split in proportion to the FLOPs of each phase (see telemetry/README.md).

#include <memory>
#include <string>
#include <vector>

#include "telemetry/sink.h"

namespace ponder::telemetry {

struct PrometheusOptions {
  std::string model_name;
  int64_t max_model_len = 4096;  // top of the token-count histograms' 1-2-5 buckets
};

class PrometheusSink : public Sink {
 public:
  explicit PrometheusSink(const PrometheusOptions& options);
  ~PrometheusSink() override;

  void AllowTenant(const std::string& tenant);

  void OnProfile(const ProfileInfo& profile) override;
  void OnRequest(const RequestRecord& request) override;
  void OnTick(int64_t rows, double seconds) override;
  void OnState(const EngineState& state) override;
  void OnBudget(const std::string& profile, const std::string& tenant, const std::string& currency,
                double remaining) override;
  void OnReady(bool ready) override;
  void OnProfileReload(bool ok) override;

  // The registry in the text exposition format 0.0.4.
  std::string Serialize() const;

  // Buckets (vLLM's, reference/serving.md §1.1).
  static const std::vector<double>& TimeToFirstTokenBuckets();
  static const std::vector<double>& InterTokenBuckets();
  static const std::vector<double>& RequestLatencyBuckets();
  static const std::vector<double>& IterationBuckets();
  static std::vector<double> OneTwoFiveBuckets(int64_t max);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ponder::telemetry
