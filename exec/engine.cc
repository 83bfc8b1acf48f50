#include "exec/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <limits>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "exec/backend.h"
#include "exec/cost.h"
#include "exec/depth_batcher.h"
#include "model/checkpoint.h"
#include "model/task_protocol.h"
#include "policy/budget.h"
#include "policy/planner.h"

namespace ponder::exec {
namespace {

// The new text a token completes: decode everything generated so far and hand out the
// part after what was already emitted, holding back an incomplete UTF-8 sequence.
class TextStream {
 public:
  std::string Push(const model::Tokenizer& tok, int32_t id) {
    ids_.push_back(id);
    auto text = tok.Decode(ids_, /*skip_special_tokens=*/true);
    if (!text.ok()) return "";
    size_t end = text->size();
    // Do not cut a multi-byte character: back up over a trailing partial sequence.
    size_t i = end;
    while (i > 0 && (static_cast<unsigned char>((*text)[i - 1]) & 0xC0) == 0x80) --i;
    if (i > 0) {
      const auto lead = static_cast<unsigned char>((*text)[i - 1]);
      const size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
      if (end - (i - 1) < need) end = i - 1;
    }
    if (end <= emitted_) return "";
    std::string out = text->substr(emitted_, end - emitted_);
    emitted_ = end;
    return out;
  }

 private:
  std::vector<int32_t> ids_;
  size_t emitted_ = 0;
};

}  // namespace

struct Engine::Impl {
  struct Pending {
    int64_t id = 0;
    SequenceSpec spec;
    std::shared_ptr<const policy::DomainProfile> profile;
    std::function<void(const TokenEvent&)> on_token;
    std::promise<Result<GenerationResult>> promise;
    uint64_t kv_reserve = 0;
    double submitted = 0.0;  // MonotonicSeconds
    double admitted = 0.0;
    double first_token = 0.0;
    double last_token = 0.0;
    std::vector<double> inter_token;  // seconds between successive tokens
    double device_seconds = 0.0;
    int64_t prompt_tokens = 0;
    DepthBatcher::Id batch_id = 0;
    TextStream text;
    std::string full_text;
    std::vector<TokenTrace> tokens;  // as emitted (for a cancelled request)
  };

  EngineOptions options;
  std::unique_ptr<model::Checkpoint> ckpt;
  std::unique_ptr<Backend> model;
  std::unique_ptr<telemetry::CostModel> cost;
  model::TaskProtocol protocol;
  std::vector<int32_t> chat_stops;
  policy::ProfileRegistry profiles;
  std::vector<std::string> profile_names;  // in load order (first = default)
  std::map<std::string, std::string> profile_paths;
  std::map<std::string, std::unique_ptr<policy::BudgetLedger>> ledgers;  // per profile
  policy::Planner planner;

  mutable std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  int64_t next_id = 1;
  std::deque<std::unique_ptr<Pending>> queue;                     // waiting, in arrival order
  std::unordered_map<int64_t, std::unique_ptr<Pending>> running;  // by request id
  std::set<int64_t> cancel_requests;
  uint64_t kv_reserved = 0;
  EngineStats stats;
  std::thread worker;
  // Worker-only state.
  std::unique_ptr<DepthBatcher> batcher;
  // Requests taken out of the queue or the batch whose outcome is not reported yet (guarded
  // by mu): the state published counts them as running, so that a scrape never sees a
  // request gone before its outcome is counted.
  int64_t finishing = 0;
  std::unordered_map<DepthBatcher::Id, int64_t> by_batch_id;

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
    }
    cv.notify_all();
    if (worker.joinable()) worker.join();
  }

  policy::BudgetLedger& Ledger(const std::string& profile) { return *ledgers.at(profile); }

  // Finishes a request that never ran or was cut short. Caller holds mu or owns p.
  // Reports a request's outcome and completes its future. `counted`: the request was
  // counted in `finishing` when it left the queue or the batch; it stops counting once its
  // outcome is reported, before its future completes.
  void Finish(Pending& p, const std::string& reason, const AdaptiveResult* r,
              bool counted = false) {
    GenerationResult g;
    g.request_id = p.id;
    g.plan = p.spec.plan;
    g.finish_reason = reason;
    g.tokens = r != nullptr ? r->tokens : p.tokens;
    auto text = ckpt->tokenizer->Decode(TokenIds(g.tokens), /*skip_special_tokens=*/true);
    g.text = text.ok() ? *text : p.full_text;
    Usage& u = g.usage;
    u.prompt_tokens = p.prompt_tokens;
    u.completion_tokens = static_cast<int64_t>(g.tokens.size());
    for (size_t i = 0; i < g.tokens.size(); ++i) {
      u.token_steps.push_back(g.tokens[i].steps);
      if (i == 0) {
        u.prompt_steps = r != nullptr ? r->prompt_steps : g.tokens[i].steps;
      } else {
        u.steps_total += g.tokens[i].steps;
      }
      u.latent_checks += g.tokens[i].latent_checks;
      u.logit_checks += g.tokens[i].logit_checks;
    }
    // Steps per generated token: the first token's steps are the prompt's pass.
    int64_t all = u.prompt_steps + u.steps_total;
    u.mean_steps_per_token = g.tokens.empty() ? 0.0 : static_cast<double>(all) / g.tokens.size();
    AdaptiveResult shaped;
    shaped.tokens = g.tokens;
    if (r != nullptr) shaped.prefill_chunks = r->prefill_chunks;
    const auto passes = PassesOf(shaped, p.prompt_tokens);
    const telemetry::RequestCost rc = cost->Request(passes);
    u.flops = rc.total().flops;
    u.currency = p.profile->currency;
    u.cost = p.profile->pricing.per_device_second * p.device_seconds +
             p.profile->pricing.per_tflop * u.flops / 1e12;
    const double now = MonotonicSeconds();
    u.queue_seconds = (p.admitted > 0 ? p.admitted : now) - p.submitted;
    u.first_token_seconds = p.first_token > 0 ? p.first_token - p.submitted : 0.0;
    u.total_seconds = now - p.submitted;
    u.kv_bytes = r != nullptr ? r->kv_bytes : 0;
    if (u.cost > 0) Ledger(p.profile->name).Charge(p.spec.plan.tenant, u.cost, now);
    if (options.sink) {
      telemetry::RequestRecord rec = Record(p.spec.plan, *p.profile, reason);
      rec.prompt_tokens = u.prompt_tokens;
      rec.generation_tokens = u.completion_tokens;
      rec.token_steps = u.token_steps;
      for (const TokenTrace& t : g.tokens) {
        rec.exit_reasons.emplace_back(policy::ExitReasonName(t.reason));
      }
      rec.latent_checks = u.latent_checks;
      rec.logit_checks = u.logit_checks;
      rec.phases = rc.phases;
      rec.checks = rc.checks;
      rec.device_seconds = p.device_seconds;
      rec.cost = u.cost;
      rec.queue_seconds = u.queue_seconds;
      rec.first_token_seconds = p.first_token > 0 ? u.first_token_seconds : -1.0;
      rec.e2e_seconds = u.total_seconds;
      rec.inter_token_seconds = p.inter_token;
      options.sink->OnRequest(rec);
      PublishBudget(*p.profile, p.spec.plan.tenant, now);
    }
    Complete(p, std::move(g), counted);
  }

  // Completes a request's future; a request counted in `finishing` stops counting first.
  void Complete(Pending& p, Result<GenerationResult> value, bool counted) {
    if (counted) {
      std::lock_guard<std::mutex> lock(mu);
      --finishing;
    }
    p.promise.set_value(std::move(value));
  }

  // The labels of a request's record.
  static telemetry::RequestRecord Record(const policy::DepthPlan& plan,
                                         const policy::DomainProfile& profile,
                                         const std::string& outcome) {
    telemetry::RequestRecord rec;
    rec.profile = profile.name;
    rec.task_class = plan.task_class;
    rec.tenant = plan.tenant;
    rec.outcome = outcome;
    rec.currency = profile.currency;
    rec.class_max_steps = plan.class_max_steps;
    return rec;
  }

  // A request refused at submission (before or after planning).
  void Rejected(const policy::DomainProfile& profile, const policy::Request& request,
                const policy::DepthPlan* plan) {
    if (!options.sink) return;
    policy::DepthPlan unplanned;
    unplanned.tenant = request.tenant;
    unplanned.task_class = request.task_class.value_or("");
    options.sink->OnRequest(Record(plan ? *plan : unplanned, profile, "rejected"));
  }

  void PublishBudget(const policy::DomainProfile& profile, const std::string& tenant,
                     double now) const {
    if (profile.FindTenant(tenant) == nullptr) return;  // no budget
    options.sink->OnBudget(profile.name, tenant, profile.currency,
                           ledgers.at(profile.name)->Remaining(tenant, now));
  }

  void PublishProfile(const policy::DomainProfile& profile) const {
    if (!options.sink) return;
    telemetry::ProfileInfo info;
    info.name = profile.name;
    info.currency = profile.currency;
    for (const auto& c : profile.task_classes) info.task_classes.push_back(c.name);
    for (const auto& [tenant, budget] : profile.tenants) info.tenants.push_back(tenant);
    options.sink->OnProfile(info);
    const double now = MonotonicSeconds();
    for (const auto& [tenant, budget] : profile.tenants) PublishBudget(profile, tenant, now);
  }

  void PublishState() const {
    if (!options.sink) return;
    telemetry::EngineState st;
    {
      std::lock_guard<std::mutex> lock(mu);
      st.running = static_cast<int64_t>(running.size()) + finishing;
      st.waiting = static_cast<int64_t>(queue.size());
      st.kv_bytes_used = running.empty() && finishing == 0 ? 0 : stats.kv_bytes_used;
      st.kv_bytes_reserved = kv_reserved;
      st.kv_bytes_capacity = stats.kv_bytes_capacity;
    }
    options.sink->OnState(st);
  }

  static std::vector<int32_t> TokenIds(const std::vector<TokenTrace>& t) {
    std::vector<int32_t> ids;
    for (const auto& x : t) ids.push_back(x.token);
    return ids;
  }

  void Run();
  [[nodiscard]] Status Reload();  // Engine::ReloadProfiles without the telemetry
};

Result<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (options.max_active < 1) return InvalidArgument("engine: max_active must be >= 1");
  if (options.max_queue < 0) return InvalidArgument("engine: max_queue must be >= 0");
  if (options.profile_paths.empty()) return InvalidArgument("engine: no domain profile given");
  PONDER_ASSIGN_OR_RETURN(impl->ckpt, model::LoadCheckpoint(options.model_dir));
  if (impl->ckpt->tokenizer == nullptr) {
    return InvalidArgument("engine: " + options.model_dir + " has no tokenizer.json");
  }
  for (const std::string& path : options.profile_paths) {
    auto loaded = policy::LoadProfile(path);
    if (!loaded.ok()) return loaded.status();
    const std::string name = loaded->name;
    if (impl->profile_paths.count(name)) {
      return InvalidArgument("engine: two profiles are named \"" + name + "\" (" +
                             impl->profile_paths[name] + ", " + path + ")");
    }
    impl->profile_paths[name] = path;
    impl->profile_names.push_back(name);
    auto ledger = std::make_unique<policy::BudgetLedger>(
        policy::LedgerOptions{.clock = [] { return MonotonicSeconds(); }});
    ledger->Configure(*loaded);
    impl->ledgers[name] = std::move(ledger);
    impl->profiles.Add(std::move(*loaded));
    impl->PublishProfile(**impl->profiles.Get(name));
  }
  PONDER_ASSIGN_OR_RETURN(impl->protocol, model::ProtocolOf(*impl->ckpt->tokenizer, "engine"));
  for (const char* s : {"<|end_turn|>", "<|end_text|>"}) {
    const int32_t id = impl->ckpt->tokenizer->TokenToId(s);
    if (id >= 0) impl->chat_stops.push_back(id);
  }
  PONDER_ASSIGN_OR_RETURN(telemetry::CostModel cm, telemetry::CostModel::Create(DimsOf(
                                                       impl->ckpt->config, impl->ckpt->weights)));
  impl->cost = std::make_unique<telemetry::CostModel>(cm);
  PONDER_ASSIGN_OR_RETURN(impl->model,
                          MakeBackend(options.backend, impl->ckpt->config, impl->ckpt->weights));
  impl->batcher = std::make_unique<DepthBatcher>(*impl->model);
  impl->batcher->set_prefill_chunk(options.prefill_chunk_tokens);
  impl->stats.kv_bytes_capacity = options.kv_budget_bytes;
  impl->PublishState();
  Impl* raw = impl.get();
  impl->worker = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

Result<RequestHandle> Engine::Submit(const GenerationRequest& request,
                                     std::function<void(const TokenEvent&)> on_token) {
  Impl& m = *impl_;
  const model::Config& cfg = m.ckpt->config;
  const std::string profile_name = request.profile.empty() ? m.profile_names[0] : request.profile;
  PONDER_ASSIGN_OR_RETURN(auto profile, m.profiles.Get(profile_name));
  // Tokens.
  std::vector<int32_t> prompt;
  std::string text;
  std::vector<int32_t> stops;
  if (request.format == PromptFormat::kChat) {
    if (request.messages.empty()) return InvalidArgument("messages: must not be empty");
    text = model::ApplyChatTemplate(request.messages, /*add_generation_prompt=*/true);
    PONDER_ASSIGN_OR_RETURN(prompt, m.ckpt->tokenizer->Encode(text, false));
    stops = m.chat_stops;
    text = request.messages.back().content;  // what routing rules match
  } else {
    if (request.prompt.empty()) return InvalidArgument("prompt: must not be empty");
    PONDER_ASSIGN_OR_RETURN(
        prompt, model::EncodeTaskPrompt(*m.ckpt->tokenizer, m.protocol, request.prompt));
    stops = {m.protocol.eos};
    text = request.prompt;
  }
  if (request.ignore_eos) stops.clear();
  for (const std::string& s : request.stop) {
    const auto ids = m.ckpt->tokenizer->Encode(s, false);
    if (!ids.ok() || ids->size() != 1) {
      return InvalidArgument("stop: \"" + s + "\" is not a single token of this model");
    }
    stops.push_back((*ids)[0]);
  }
  const int64_t max_prompt =
      m.options.max_prompt_tokens > 0 ? m.options.max_prompt_tokens : cfg.block_size - 1;
  if (static_cast<int64_t>(prompt.size()) > std::min<int64_t>(max_prompt, cfg.block_size - 1)) {
    return InvalidArgument("prompt: " + std::to_string(prompt.size()) + " tokens, at most " +
                           std::to_string(std::min<int64_t>(max_prompt, cfg.block_size - 1)));
  }
  // Plan.
  policy::Request preq = request.policy;
  preq.prompt = text;
  preq.prompt_tokens = static_cast<int>(prompt.size());
  policy::PlanContext ctx;
  ctx.now = MonotonicSeconds();
  ctx.tenant_spend = m.Ledger(profile->name).Snapshot(ctx.now);
  {
    std::lock_guard<std::mutex> lock(m.mu);
    ctx.seconds_per_iteration = m.stats.seconds_per_iteration;
    ctx.queue_depth = static_cast<int>(m.queue.size());
  }
  auto planned = m.planner.Plan(preq, *profile, ctx);
  if (!planned.ok()) {
    if (planned.status().code() == StatusCode::kResourceExhausted)
      m.Rejected(*profile, preq, nullptr);
    return planned.status();
  }
  const policy::DepthPlan plan = std::move(*planned);
  auto p = std::make_unique<Impl::Pending>();
  p->profile = profile;
  p->on_token = std::move(on_token);
  p->submitted = ctx.now;
  p->prompt_tokens = static_cast<int64_t>(prompt.size());
  SequenceSpec& spec = p->spec;
  spec.prompt = std::move(prompt);
  spec.plan = plan;
  const int64_t cap = m.options.max_new_tokens > 0 ? m.options.max_new_tokens : cfg.block_size;
  // The class's default is cut to the limit and the context; an explicit request is checked.
  int64_t max_tokens = request.max_tokens.value_or(std::min<int64_t>(
      {plan.sampling.max_tokens, cap, cfg.block_size - static_cast<int64_t>(spec.prompt.size())}));
  if (max_tokens < 1) return InvalidArgument("max_tokens: must be >= 1");
  if (max_tokens > cap) {
    return InvalidArgument("max_tokens: " + std::to_string(max_tokens) + " is above the limit of " +
                           std::to_string(cap));
  }
  spec.options.max_tokens = max_tokens;
  spec.options.seed = request.seed;
  spec.options.init_scale = m.options.init_scale;
  spec.options.sampling.temperature = request.temperature.value_or(plan.sampling.temperature);
  spec.options.sampling.top_p = request.top_p.value_or(plan.sampling.top_p);
  if (spec.options.sampling.temperature < 0 || spec.options.sampling.top_p <= 0 ||
      spec.options.sampling.top_p > 1) {
    return InvalidArgument("sampling: temperature must be >= 0 and top_p in (0, 1]");
  }
  spec.options.stop_ids = stops;
  PONDER_ASSIGN_OR_RETURN(spec.options.kv, KvStrategy::Parse(plan.kv_strategy));
  const int64_t positions =
      std::min<int64_t>(cfg.block_size, static_cast<int64_t>(spec.prompt.size()) + max_tokens);
  p->kv_reserve = MaxSequenceBytes(cfg.n_layers_in_prelude, cfg.n_layers_in_recurrent_block,
                                   cfg.n_layers_in_coda, cfg.n_embd, spec.options.kv,
                                   plan.max_steps, positions);
  if (p->kv_reserve > m.options.kv_budget_bytes) {
    m.Rejected(*profile, preq, &plan);
    return ResourceExhausted("kv: the request needs up to " + std::to_string(p->kv_reserve) +
                             " bytes of KV cache, more than the engine's budget of " +
                             std::to_string(m.options.kv_budget_bytes));
  }
  RequestHandle handle;
  handle.plan = plan;
  handle.result = p->promise.get_future().share();
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (static_cast<int64_t>(m.queue.size()) >= m.options.max_queue) {
      ++m.stats.rejected;
      m.Rejected(*profile, preq, &plan);
      return ResourceExhausted("queue: " + std::to_string(m.queue.size()) +
                               " requests are waiting (the limit); retry later");
    }
    p->id = m.next_id++;
    handle.id = p->id;
    m.queue.push_back(std::move(p));
    m.stats.waiting = static_cast<int64_t>(m.queue.size());
  }
  m.cv.notify_all();
  return handle;
}

void Engine::CountRejected(const GenerationRequest& request) {
  auto profile = impl_->profiles.Get(request.profile.empty() ? default_profile() : request.profile);
  if (profile.ok()) impl_->Rejected(**profile, request.policy, nullptr);
}

bool Engine::Cancel(int64_t request_id) {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    bool known = m.running.count(request_id) > 0;
    for (const auto& p : m.queue) known = known || p->id == request_id;
    if (!known) return false;
    m.cancel_requests.insert(request_id);
  }
  m.cv.notify_all();
  return true;
}

void Engine::Impl::Run() {
  using Clock = std::chrono::steady_clock;
  while (true) {
    std::vector<std::unique_ptr<Pending>> to_cancel, to_expire;
    std::vector<Pending*> to_admit;
    std::vector<int64_t> cancel_running;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return stopping || !queue.empty() || !running.empty(); });
      if (stopping) {
        for (auto& p : queue) Finish(*p, "cancelled", nullptr);
        queue.clear();
        for (auto& [id, p] : running) Finish(*p, "cancelled", nullptr);
        running.clear();
        return;
      }
      const double now = MonotonicSeconds();
      // Waiting requests: cancelled, or past their deadline before they ran.
      for (auto it = queue.begin(); it != queue.end();) {
        Pending& p = **it;
        const bool cancel = cancel_requests.erase(p.id) > 0;
        const bool late = p.spec.plan.deadline_seconds > 0 &&
                          now >= p.spec.plan.start_seconds + p.spec.plan.deadline_seconds;
        if (cancel || late) {
          (cancel ? to_cancel : to_expire).push_back(std::move(*it));
          it = queue.erase(it);
        } else {
          ++it;
        }
      }
      for (int64_t id : cancel_requests) {
        if (running.count(id)) cancel_running.push_back(id);
      }
      cancel_requests.clear();
      // Admission: highest priority first (arrival order among equals), while the batch
      // has room and the KV budget holds the request's worst case.
      while (static_cast<int64_t>(running.size()) < options.max_active && !queue.empty()) {
        auto best = queue.begin();
        for (auto it = queue.begin(); it != queue.end(); ++it) {
          if ((*it)->spec.plan.priority > (*best)->spec.plan.priority) best = it;
        }
        if (kv_reserved + (*best)->kv_reserve > options.kv_budget_bytes) break;
        kv_reserved += (*best)->kv_reserve;
        Pending* raw = best->get();
        raw->admitted = now;
        running.emplace(raw->id, std::move(*best));
        queue.erase(best);
        to_admit.push_back(raw);
      }
      stats.waiting = static_cast<int64_t>(queue.size());
      finishing += static_cast<int64_t>(to_cancel.size() + to_expire.size());
    }
    for (auto& p : to_cancel) Finish(*p, "cancelled", nullptr, /*counted=*/true);
    for (auto& p : to_expire) Finish(*p, "deadline", nullptr, /*counted=*/true);
    {
      std::lock_guard<std::mutex> lock(mu);
      stats.cancelled += static_cast<int64_t>(to_cancel.size());
    }
    // Running requests cancelled: their caches go at once.
    for (int64_t id : cancel_running) {
      std::unique_ptr<Pending> p;
      {
        std::lock_guard<std::mutex> lock(mu);
        auto it = running.find(id);
        if (it == running.end()) continue;
        p = std::move(it->second);
        running.erase(it);
        kv_reserved -= p->kv_reserve;
        ++stats.cancelled;
        ++finishing;
      }
      if (p->batch_id != 0) {
        batcher->Remove(p->batch_id);
        by_batch_id.erase(p->batch_id);
      }
      Finish(*p, "cancelled", nullptr, /*counted=*/true);
    }
    for (Pending* p : to_admit) {
      SequenceSpec spec = p->spec;
      const model::Tokenizer& tok = *ckpt->tokenizer;
      spec.on_token = [this, p, &tok](const TokenTrace& t) {
        const double now = MonotonicSeconds();
        if (p->first_token == 0) p->first_token = now;
        if (p->last_token > 0) p->inter_token.push_back(now - p->last_token);
        p->last_token = now;
        p->tokens.push_back(t);
        TokenEvent ev{p->id, t.token, p->text.Push(tok, t.token), t.steps, t.reason};
        p->full_text += ev.text;
        if (p->on_token) p->on_token(ev);
      };
      auto id = batcher->Add(std::move(spec));
      if (!id.ok()) {  // validated at Submit; should not happen
        std::unique_ptr<Pending> owned;
        {
          std::lock_guard<std::mutex> lock(mu);
          owned = std::move(running[p->id]);
          running.erase(p->id);
          kv_reserved -= p->kv_reserve;
        }
        owned->promise.set_value(id.status());
        continue;
      }
      p->batch_id = *id;
      by_batch_id[*id] = p->id;
    }
    if (batcher->active() == 0) {
      PublishState();  // cancellations may have emptied the batch
      continue;
    }
    // Elastic depth: with requests waiting for a full batch, running tokens' caps shrink.
    int64_t waiting = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      waiting = static_cast<int64_t>(queue.size());
    }
    const int64_t active = batcher->active();
    const double load = static_cast<double>(active + waiting) / options.max_active;
    std::vector<std::pair<DepthBatcher::Id, Pending*>> live;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (auto& [id, p] : running) live.emplace_back(p->batch_id, p.get());
    }
    for (auto& [bid, p] : live) {
      SequenceControl c;
      if (options.elastic_depth && waiting > 0 && load > 1.0) {
        const policy::DepthPlan& plan = p->spec.plan;
        c.load_cap =
            plan.min_steps + static_cast<int>(std::floor((plan.max_steps - plan.min_steps) / load));
      }
      batcher->SetControl(bid, c);
    }
    const auto t0 = Clock::now();
    const Status st = batcher->Tick();
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    const int64_t rows = batcher->last_tick_rows();
    for (auto& [bid, p] : live) p->device_seconds += rows > 0 ? secs / rows : 0.0;
    // Finished sequences.
    std::vector<std::pair<std::unique_ptr<Pending>, Result<AdaptiveResult>>> done;
    for (DepthBatcher::Id bid : batcher->FinishedIds()) {
      auto r = batcher->TakeResult(bid);
      const int64_t rid = by_batch_id[bid];
      by_batch_id.erase(bid);
      std::lock_guard<std::mutex> lock(mu);
      auto it = running.find(rid);
      if (it == running.end()) continue;
      kv_reserved -= it->second->kv_reserve;
      done.emplace_back(std::move(it->second), std::move(r));
      running.erase(it);
      ++finishing;
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      ++stats.ticks;
      stats.last_batch_rows = rows;
      stats.active = batcher->active();
      stats.kv_bytes_used = batcher->kv_bytes();
      stats.kv_bytes_reserved = kv_reserved;
      // Seconds one token-iteration takes in the current batch (for deadline planning).
      const double a = 0.2;
      stats.seconds_per_iteration = stats.seconds_per_iteration == 0
                                        ? secs
                                        : (1 - a) * stats.seconds_per_iteration + a * secs;
      stats.completed += static_cast<int64_t>(done.size());
    }
    if (options.sink) options.sink->OnTick(rows, secs);
    for (auto& [p, r] : done) {
      if (!r.ok()) {
        Complete(*p, r.status(), /*counted=*/true);
        continue;
      }
      Finish(*p, r->finish_reason, &*r, /*counted=*/true);
    }
    PublishState();
    if (!st.ok()) {
      // A failed tick: end every running request with the error rather than spin.
      std::vector<std::unique_ptr<Pending>> failed;
      {
        std::lock_guard<std::mutex> lock(mu);
        for (auto& [id, p] : running) failed.push_back(std::move(p));
        running.clear();
        kv_reserved = 0;
      }
      for (auto& p : failed) {
        batcher->Remove(p->batch_id);
        by_batch_id.erase(p->batch_id);
        p->promise.set_value(st);
      }
    }
  }
}

EngineStats Engine::Stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  EngineStats s = impl_->stats;
  s.waiting = static_cast<int64_t>(impl_->queue.size());
  s.active = static_cast<int64_t>(impl_->running.size());
  if (s.active == 0) s.kv_bytes_used = 0;
  s.kv_bytes_reserved = impl_->kv_reserved;
  s.kv_bytes_free =
      s.kv_bytes_capacity > s.kv_bytes_reserved ? s.kv_bytes_capacity - s.kv_bytes_reserved : 0;
  return s;
}

std::string ModelNameOf(const std::string& model_dir) {
  std::string name = std::filesystem::path(model_dir).filename().string();
  if (name.empty()) name = std::filesystem::path(model_dir).parent_path().filename().string();
  return name;
}

ModelInfo Engine::model_info() const {
  const auto& c = *impl_->ckpt;
  ModelInfo info;
  info.dir = c.dir;
  info.name = ModelNameOf(c.dir);
  info.parameters = c.config.UniqueParams();
  info.context = c.config.block_size;
  info.mean_recurrence = c.config.mean_recurrence;
  return info;
}

const model::Tokenizer& Engine::tokenizer() const { return *impl_->ckpt->tokenizer; }

std::vector<std::string> Engine::ProfileNames() const { return impl_->profile_names; }

Result<std::shared_ptr<const policy::DomainProfile>> Engine::Profile(
    const std::string& name) const {
  return impl_->profiles.Get(name);
}

std::string Engine::default_profile() const { return impl_->profile_names[0]; }

Status Engine::ReloadProfiles() {
  const Status st = impl_->Reload();
  if (impl_->options.sink) impl_->options.sink->OnProfileReload(st.ok());
  return st;
}

Status Engine::Impl::Reload() {
  Impl& m = *this;
  for (const std::string& name : m.profile_names) {
    const std::string& path = m.profile_paths.at(name);
    auto loaded = policy::LoadProfile(path);
    if (!loaded.ok()) return loaded.status();  // the old profile stays
    if (loaded->name != name) {
      return InvalidArgument(path + ": /name: the profile's name changed from \"" + name +
                             "\" to \"" + loaded->name + "\"; restart to rename a profile");
    }
    m.ledgers.at(name)->Configure(*loaded);
    m.profiles.Add(std::move(*loaded));
    m.PublishProfile(**m.profiles.Get(name));
  }
  return Status::Ok();
}

void Engine::PublishTelemetry() const {
  const Impl& m = *impl_;
  if (!m.options.sink) return;
  m.PublishState();
  const double now = MonotonicSeconds();
  for (const std::string& name : m.profile_names) {
    auto profile = m.profiles.Get(name);
    if (!profile.ok()) continue;
    for (const auto& [tenant, budget] : (*profile)->tenants)
      m.PublishBudget(**profile, tenant, now);
  }
}

double Engine::RemainingBudget(const std::string& profile, const std::string& tenant) const {
  auto it = impl_->ledgers.find(profile);
  if (it == impl_->ledgers.end()) return std::numeric_limits<double>::infinity();
  return it->second->Remaining(tenant, MonotonicSeconds());
}

}  // namespace ponder::exec
