#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "exec/backend.h"
#include "exec/kv_cache.h"
#include "model/tokenizer.h"
#include "policy/profile.h"
#include "scenarios/workload.h"
#include "telemetry/cost_model.h"

namespace ponder::scenarios {

struct ReplayOptions {
  int64_t steps = 32;       // fixed core iterations per token
  int64_t max_tokens = 16;  // answer tokens at most
  int64_t batch = 32;       // sequences decoded together
  uint64_t seed = 0;
  double init_scale = 1.0;
  exec::KvStrategy kv;
  // When set, each request is planned with this profile (its `class` when the profile
  // has it, else the profile's routing) and every token exits per the plan's rule;
  // `steps` is then ignored. Requests run one at a time.
  const policy::DomainProfile* profile = nullptr;
  // Dimensions for the cost model (FLOPs per request); default: DimsOf(model.config()).
  std::optional<telemetry::ModelDims> dims;
};

// What one request used. Latency is the wall time of the call that served it: with a
// profile one request at a time; at fixed depth the batched call it took part in (every
// request of a batch waits for the batch). Device time is the wall time of those calls
// shared among their requests in proportion to their FLOPs (one request alone: its
// latency), so that a group's device seconds add up to the time the device was busy.
struct RequestUsage {
  int64_t prompt_tokens = 0;
  int64_t tokens = 0;           // generated tokens
  double seconds = 0.0;         // latency
  double device_seconds = 0.0;  // share of the device's busy time
  telemetry::RequestCost cost;  // FLOPs and bytes from the cost model
  int64_t logit_checks = 0;
  int64_t latent_checks = 0;
};

// Accuracy and compute of a group of requests.
struct Score {
  int64_t requests = 0;
  int64_t correct = 0;
  int64_t tokens = 0;                    // generated tokens
  int64_t steps = 0;                     // core iterations spent on them
  std::vector<int32_t> token_steps;      // iterations of each generated token
  std::map<std::string, int64_t> exits;  // tokens by exit reason
  double accuracy() const { return requests ? double(correct) / requests : 0.0; }
  double mean_steps_per_token() const { return tokens ? double(steps) / tokens : 0.0; }
  // Quantile q in [0, 1] of the per-token iterations (nearest rank); 0 when empty.
  double StepsQuantile(double q) const;
  void Add(bool ok, const std::vector<int32_t>& per_token_steps,
           const std::vector<std::string>& exit_reasons);

  // Usage of the group's requests (AddUsage once per request).
  int64_t prompt_tokens = 0;
  double seconds = 0.0;         // latencies, summed
  double device_seconds = 0.0;  // device time, summed
  double flops = 0.0;           // prefill + decode + checks
  double prefill_flops = 0.0, decode_flops = 0.0, check_flops = 0.0;
  int64_t logit_checks = 0, latent_checks = 0;
  std::vector<double> request_seconds;            // latency of each request
  std::vector<double> request_seconds_per_token;  // its latency / its generated tokens
  void AddUsage(const RequestUsage& usage);
  double flops_per_token() const { return tokens ? flops / tokens : 0.0; }
  double mean_seconds_per_request() const;
  double mean_seconds_per_token() const { return tokens ? seconds / tokens : 0.0; }
  // Quantile q of the requests' latencies (nearest rank, as StepsQuantile); 0 when empty.
  double SecondsQuantile(double q) const;
  double SecondsPerTokenQuantile(double q) const;
  // pricing.per_device_second x device_seconds + pricing.per_tflop x flops / 1e12.
  double Cost(const policy::Pricing& pricing) const;
};

struct ItemResult {
  std::string id, answer;
  bool correct = false;
  int64_t tokens = 0;
};

struct ReplayReport {
  Score total;
  std::map<std::string, Score> classes;   // by suggested class ("none" when absent)
  std::map<std::string, Score> families;  // by task family
  std::map<std::string, Score> levels;    // by "family/difficulty"
  std::vector<ItemResult> items;
  // The profile's pricing, when the replay ran with one (costs are reported only then).
  std::optional<policy::Pricing> pricing;
  std::string currency;
};

// Scores a workload with the runtime. Protocol of the bundled model's tasks: the prompt is
// encoded without specials after <|begin_text|>; greedy decoding until <|end_text|> (or
// max_tokens); the answer (specials dropped) must equal `expected` exactly.
[[nodiscard]] Result<ReplayReport> Replay(exec::Backend& model, const model::Tokenizer& tokenizer,
                                          const std::vector<WorkloadItem>& items,
                                          const ReplayOptions& options);

// {"accuracy", "requests", "mean_steps_per_token", "steps", "classes": {name: {...}},
//  "families": {...}, "levels": {...}} as JSON text. Every group (and the top level) has
// the same fields: accuracy, requests, correct, tokens, prompt_tokens, mean/p50/p95
// steps per token, exit_reasons {reason: tokens}; latency: seconds (sum),
// mean_seconds_per_request, p95_seconds_per_request, mean_seconds_per_token (seconds /
// tokens), p95_seconds_per_token (of each request's seconds / tokens), device_seconds;
// compute: flops, flops_per_token, prefill_flops, decode_flops, check_flops,
// logit_checks, latent_checks; and, when the report has pricing, cost, cost_per_request,
// cost_per_token (the top level then also has "currency" and "pricing").
std::string ReportJson(const ReplayReport& report, int64_t steps, bool with_items);

// The per-class tables of the command line (fits 100 columns): depth and exits, then
// latency, compute and (when priced) cost; then accuracy per family.
std::string ReportText(const ReplayReport& report, const std::string& title);

}  // namespace ponder::scenarios
