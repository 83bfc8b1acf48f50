#pragma once

// DomainProfile: what a domain (education, finance, chat) buys from the model, as a JSON file.
// The schema, with an example, is in policy/README.md. Parsing validates everything up front;
// every error names the source file, the JSON pointer of the offending value and the reason,
// e.g. `finance.json: /task_classes/2/max_steps: must be >= min_steps (4 < 8)`.

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "core/status.h"
#include "policy/criteria.h"

namespace ponder::policy {

// Hard limits of the schema.
inline constexpr int kMaxStepsLimit = 4096;  // upper bound on min_steps / max_steps
inline constexpr int kMaxPriority = 9;       // priority is 0 (lowest) .. 9 (highest)

// How a class decides to stop iterating a token.
struct ExitSpec {
  ExitRule rule = ExitRule::kNone;
  // Signal threshold (argmax-stability: consecutive stable checks). Defaults per rule to
  // DefaultThreshold(rule).
  double threshold = 0.0;
  int check_every = 1;  // check every n-th iteration from check_from
  int check_from = 1;   // first iteration (1-based) a check may happen at
  // Logit rules only: run the (costly) logit check only once the (free) latent-diff signal
  // is below this value. nullopt: always run the logit check.
  std::optional<double> gate_latent_below;
};

struct SamplingSpec {
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;        // nucleus mass in (0, 1]
  int max_tokens = 64;       // tokens generated at most (also the deadline estimate)
};

// One kind of request of a domain, with its depth range and exit behaviour.
struct TaskClass {
  std::string name;
  std::string description;
  int min_steps = 1;  // 1 <= min_steps <= max_steps <= kMaxStepsLimit
  int max_steps = 1;
  ExitSpec exit;
  bool warm_start = false;           // start each token from the previous token's final state
  std::string kv_strategy = "full";  // "full" or "compress-sN"
  int priority = 0;                  // 0..9, higher is served first
  int deadline_ms = 0;               // request deadline in milliseconds, 0 = none
  SamplingSpec sampling;
};

// An ordered routing rule: a request goes to `task_class` when every condition given holds.
struct RoutingRule {
  std::string task_class;
  std::vector<std::string> keywords;  // lower case; any one occurring in the prompt suffices
  std::string regex_source;           // "" = no regex condition
  std::optional<std::regex> regex;    // ECMAScript, case-insensitive, compiled at load
  int min_prompt_chars = 0;           // prompt length in code points >= this
  int max_prompt_chars = 0;           // prompt length <= this; 0 = no upper bound
  std::map<std::string, std::string> metadata;  // every pair must equal the request's
};

struct Pricing {
  double per_device_second = 0.0;  // currency units per device-second
  double per_tflop = 0.0;          // currency units per 1e12 FLOPs
};

enum class OnExhausted { kDegrade, kReject };

struct TenantBudget {
  double budget = 0.0;           // currency units per window
  double window_seconds = 3600;  // window length, seconds
  OnExhausted on_exhausted = OnExhausted::kDegrade;
};

struct DomainProfile {
  std::string source;  // file name the profile came from (for messages)
  std::string name;
  std::string description;
  std::string currency = "USD";
  Pricing pricing;
  std::string default_class;
  std::vector<TaskClass> task_classes;
  std::vector<RoutingRule> routing;
  // Per tenant; the entry "default" (when present) applies to tenants not listed.
  std::map<std::string, TenantBudget> tenants;

  const TaskClass* FindClass(const std::string& class_name) const;
  // The tenant's budget, else the "default" entry, else nullptr (no budget).
  const TenantBudget* FindTenant(const std::string& tenant) const;
};

const char* OnExhaustedName(OnExhausted value);

// Parses and validates a profile. `source` names the text in messages (a file name).
[[nodiscard]] Result<DomainProfile> ParseProfile(const std::string& text,
                                                 const std::string& source);
// Reads `path` and parses it; messages name the path as given.
[[nodiscard]] Result<DomainProfile> LoadProfile(const std::string& path);

// Named profiles, shared by request threads. Thread-safe; profiles are immutable once
// registered, and a reload swaps in a new one without disturbing requests using the old.
class ProfileRegistry {
 public:
  // Loads `path` and registers it under its "name" (replacing a profile of that name).
  [[nodiscard]] Status Load(const std::string& path);
  // Loads `path` again. On error the registered profiles are unchanged and the error is
  // returned; on success the profile of the new name replaces the old one.
  [[nodiscard]] Status Reload(const std::string& path);
  void Add(DomainProfile profile);

  // NotFound (naming the registered profiles) when absent.
  [[nodiscard]] Result<std::shared_ptr<const DomainProfile>> Get(const std::string& name) const;
  std::vector<std::string> Names() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<const DomainProfile>> profiles_;
};

}  // namespace ponder::policy
