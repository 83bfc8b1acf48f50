#pragma once

// telemetry::Sink: what the engine tells telemetry, as plain data (no Prometheus types), so
// an embedder can route it anywhere. PrometheusSink (prometheus_sink.h) is the
// implementation `ponder serve` exposes on /metrics; the metric names are listed there.
//
// Calls may come from any thread (request threads for rejections, the engine's worker for
// the rest); implementations must be thread-safe and quick.

#include <cstdint>
#include <string>
#include <vector>

#include "telemetry/cost_model.h"

namespace ponder::telemetry {

// What a profile declares that bounds the label values: its classes (with their maximum
// depth) and the tenants it names in its budgets.
struct ProfileInfo {
  std::string name;
  std::string currency;
  std::vector<std::string> task_classes;
  std::vector<std::string> tenants;  // "default" included when the profile has it
};

// One request that ended, whatever the way.
struct RequestRecord {
  std::string profile;
  std::string task_class;
  std::string tenant;
  // "stop", "length", "deadline", "cancelled" (it had been queued); "rejected" (refused at
  // submission: queue full, budget, KV budget; only the request counter moves).
  std::string outcome;
  std::string currency;
  int64_t prompt_tokens = 0;
  int64_t generation_tokens = 0;
  // Core iterations of each generated token; [0] is the prompt's pass, which produced it.
  std::vector<int64_t> token_steps;
  // Exit reason of each generated token (policy::ExitReasonName), same order.
  std::vector<std::string> exit_reasons;
  int64_t class_max_steps = 0;  // the class's maximum depth (compute saved is against it)
  int64_t latent_checks = 0;
  int64_t logit_checks = 0;
  PhaseCost phases;             // the passes by phase, checks excluded
  Cost checks;                  // what the exit checks added
  double device_seconds = 0.0;  // the request's share of the ticks it ran in
  double cost = 0.0;            // in `currency`
  double queue_seconds = 0.0;
  double first_token_seconds = -1.0;  // from submission; < 0 when no token came
  double e2e_seconds = 0.0;
  std::vector<double> inter_token_seconds;  // between successive tokens
};

// The scheduler's state (gauges).
struct EngineState {
  int64_t running = 0;
  int64_t waiting = 0;
  uint64_t kv_bytes_used = 0;      // held by the running sequences' caches
  uint64_t kv_bytes_reserved = 0;  // reserved by admission (each sequence's worst case)
  uint64_t kv_bytes_capacity = 0;
};

class Sink {
 public:
  virtual ~Sink() = default;
  // A profile was loaded or reloaded.
  virtual void OnProfile(const ProfileInfo& profile) = 0;
  virtual void OnRequest(const RequestRecord& request) = 0;
  // One scheduler tick: rows (sequences) iterated together and its wall time.
  virtual void OnTick(int64_t rows, double seconds) = 0;
  virtual void OnState(const EngineState& state) = 0;
  // Budget left in the tenant's current window (currency units).
  virtual void OnBudget(const std::string& profile, const std::string& tenant,
                        const std::string& currency, double remaining) = 0;
  // The model is loaded and requests are served (false while loading).
  virtual void OnReady(bool ready) = 0;
  // A reload of the profile files ended: every profile replaced, or (ok false) an invalid
  // file refused with the old profiles kept.
  virtual void OnProfileReload(bool ok) = 0;
};

}  // namespace ponder::telemetry
