#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/status.h"
#include "exec/cpu/cpu_model.h"
#include "exec/kv_cache.h"
#include "model/tokenizer.h"
#include "policy/profile.h"
#include "scenarios/workload.h"

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
};

// Scores a workload with the runtime. Protocol of the bundled model's tasks: the prompt is
// encoded without specials after <|begin_text|>; greedy decoding until <|end_text|> (or
// max_tokens); the answer (specials dropped) must equal `expected` exactly.
[[nodiscard]] Result<ReplayReport> Replay(exec::cpu::CpuModel& model,
                                          const model::Tokenizer& tokenizer,
                                          const std::vector<WorkloadItem>& items,
                                          const ReplayOptions& options);

// {"accuracy", "requests", "mean_steps_per_token", "steps", "classes": {name: {...}},
//  "families": {...}, "levels": {...}} as JSON text.
std::string ReportJson(const ReplayReport& report, int64_t steps, bool with_items);

}  // namespace ponder::scenarios
