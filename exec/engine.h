#pragma once

// Engine: the embedding API. Loads a model and domain profiles, plans each request with the
// policy (class, depth range, exit rule, budget, deadline, load), and serves requests with
// continuous depth batching on a worker thread. Thread-safe: Submit, Cancel, Stats and
// the profile calls may come from any thread; callbacks run on the worker thread and must
// not block for long.
//
//   auto engine = ponder::exec::Engine::Create({.model_dir = "model/zoo/ponder-micro",
//                                               .profile_paths =
//                                               {"scenarios/profiles/finance.json"}});
//   ponder::exec::GenerationRequest req;
//   req.prompt = "+4*3+7*9=";
//   req.profile = "finance";
//   req.policy.tenant = "acme";
//   auto handle = (*engine)->Submit(req, [](const ponder::exec::TokenEvent& t) { ... });
//   ponder::Result<ponder::exec::GenerationResult> done = handle->result.get();

#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "exec/adaptive.h"
#include "exec/backend.h"
#include "model/tokenizer.h"
#include "policy/plan.h"
#include "policy/profile.h"
#include "telemetry/sink.h"

namespace ponder::exec {

struct EngineOptions {
  std::string model_dir;
  std::vector<std::string> profile_paths;  // domain profiles (JSON); the first is the default
  BackendOptions backend;                  // cpu or cuda, CPU threads, CUDA device and weights
  int max_active = 32;                     // sequences iterating together (batch size)
  int max_queue = 256;                     // waiting requests; beyond it Submit fails (429)
  uint64_t kv_budget_bytes = 1ull << 30;   // KV cache reserved by admitted sequences, at most
  double init_scale = 1.0;                 // initial state scale (0: zero state)
  // Elastic depth: with waiting requests and a full batch, running tokens' caps shrink to
  // min + (max - min) / load (load = (active + waiting) / max_active). Off: requests wait.
  bool elastic_depth = true;
  int max_prompt_tokens = 0;  // 0: the model's context minus one
  int max_new_tokens = 0;     // hard cap on a request's max_tokens (0: the context)
  // Prompts longer than this are prefilled in chunks of this many tokens, so that running
  // decodes are not held up by a long prompt (0: never; see DepthBatcher::set_prefill_chunk).
  int prefill_chunk_tokens = 512;
  // Where telemetry goes (e.g. a telemetry::PrometheusSink); null: nowhere. It sees every
  // profile as loaded, every request as it ends (rejections included), every tick, the
  // scheduler's state and the tenants' remaining budgets.
  std::shared_ptr<telemetry::Sink> sink;
};

// How the prompt text becomes tokens.
enum class PromptFormat {
  kCompletion,  // the model's task protocol: <|begin_text|> + text (no template)
  kChat,        // the chat template over `messages`, with the generation prompt
};

struct GenerationRequest {
  std::string profile;                       // profile name; "" = the engine's default profile
  std::string prompt;                        // kCompletion
  std::vector<model::ChatMessage> messages;  // kChat
  PromptFormat format = PromptFormat::kCompletion;
  // Routing and depth: task_class, tenant, metadata, min/max steps, exit rule/threshold,
  // deadline_ms (policy.prompt and prompt_tokens are filled in by the engine).
  policy::Request policy;
  std::optional<int> max_tokens;      // default: the class's sampling.max_tokens
  std::optional<double> temperature;  // default: the class's
  std::optional<double> top_p;
  uint64_t seed = 0;
  std::vector<std::string> stop;  // extra stop strings (each must be one token)
  bool ignore_eos = false;        // run to max_tokens through end-of-text (benchmarks)
};

// One generated token, as it is produced.
struct TokenEvent {
  int64_t request_id = 0;
  int32_t token = 0;
  std::string text;  // the new text this token completes (may be "" mid UTF-8 sequence)
  int64_t steps = 0;
  policy::ExitReason reason = policy::ExitReason::kNone;
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t steps_total = 0;  // core iterations of the generated tokens (prefill excluded)
  int64_t prompt_steps = 0;
  double mean_steps_per_token = 0.0;
  std::vector<int64_t> token_steps;
  int64_t latent_checks = 0, logit_checks = 0;
  double flops = 0.0;  // whole request: prefill, decode and checks (telemetry cost model)
  double cost = 0.0;   // in the profile's currency
  std::string currency;
  double queue_seconds = 0.0;        // waiting for admission
  double first_token_seconds = 0.0;  // from submission
  double total_seconds = 0.0;        // from submission
  uint64_t kv_bytes = 0;             // the sequence's cache at its end
};

struct GenerationResult {
  int64_t request_id = 0;
  std::vector<TokenTrace> tokens;
  std::string text;  // decoded completion (special tokens dropped)
  // "stop", "length", "deadline", "cancelled"
  std::string finish_reason;
  policy::DepthPlan plan;
  Usage usage;
};

struct RequestHandle {
  int64_t id = 0;
  policy::DepthPlan plan;
  std::shared_future<Result<GenerationResult>> result;
};

struct EngineStats {
  int64_t active = 0;              // sequences in the batch
  int64_t waiting = 0;             // admitted to the queue, not yet running
  uint64_t kv_bytes_used = 0;      // held by the running sequences' caches
  uint64_t kv_bytes_reserved = 0;  // reserved by admission (each sequence's worst case, exact)
  uint64_t kv_bytes_capacity = 0;
  uint64_t kv_bytes_free = 0;   // capacity - reserved: what admission can still hand out
  int64_t last_batch_rows = 0;  // sequences in the last tick
  int64_t ticks = 0;
  int64_t completed = 0, cancelled = 0, rejected = 0;
  double seconds_per_iteration = 0.0;  // running estimate (deadline planning)
};

// A model's name from its directory: the last component ("model/zoo/ponder-micro/" ->
// "ponder-micro"); the metrics' model_name and /v1/models use it.
std::string ModelNameOf(const std::string& model_dir);

struct ModelInfo {
  std::string name;  // the model directory's last component
  std::string dir;
  int64_t parameters = 0;
  int64_t context = 0;
  int64_t mean_recurrence = 0;
};

class Engine {
 public:
  // Loads model, tokenizer and profiles, starts the worker. Errors name the file.
  [[nodiscard]] static Result<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  ~Engine();  // cancels what is running and joins the worker

  // Plans and queues a request. Errors: bad input (kInvalidArgument: empty prompt, unknown
  // profile/class/rule, too many tokens), budget rejected or queue full
  // (kResourceExhausted; the server answers 429). `on_token` sees every token.
  [[nodiscard]] Result<RequestHandle> Submit(const GenerationRequest& request,
                                             std::function<void(const TokenEvent&)> on_token = {});
  // Ends a request (waiting or running) with finish_reason "cancelled" and what it has;
  // its KV cache is freed at once. False when unknown or already finished.
  bool Cancel(int64_t request_id);
  // Counts a request its caller refused before submitting it (e.g. a server limit) as
  // "rejected" in telemetry, with the labels Submit would have given it.
  void CountRejected(const GenerationRequest& request);

  EngineStats Stats() const;
  ModelInfo model_info() const;
  const model::Tokenizer& tokenizer() const;

  // Profiles: names, one profile, reload every profile file (an invalid file keeps the
  // old profile and its error is returned).
  std::vector<std::string> ProfileNames() const;
  [[nodiscard]] Result<std::shared_ptr<const policy::DomainProfile>> Profile(
      const std::string& name) const;
  std::string default_profile() const;
  [[nodiscard]] Status ReloadProfiles();
  // Budget left in the tenant's window (profile currency); +inf without a budget.
  double RemainingBudget(const std::string& profile, const std::string& tenant) const;
  // Sends the scheduler's state and every budgeted tenant's remaining budget to the sink
  // (a scrape calls it, so that windows that rolled over show).
  void PublishTelemetry() const;

  struct Impl;

 private:
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ponder::exec
