#include "exec/depth_batcher.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "policy/criteria.h"

namespace ponder::exec {

struct DepthBatcher::Seq {
  Seq(SequenceSpec s, std::unique_ptr<SequenceCache> c)
      : spec(std::move(s)), cache(std::move(c)), controller(spec.plan) {}

  SequenceSpec spec;
  Id id = 0;
  std::unique_ptr<SequenceCache> cache;
  policy::ExitController controller;
  policy::SignalTracker tracker;          // latent signals
  std::unique_ptr<LogitHistory> history;  // logit signals, where the backend keeps logits
  SequenceControl control;
  uint64_t rng = 0;
  std::vector<int32_t> input;     // the rows of the next token (the prompt, then one id)
  std::vector<int32_t> pending;   // prompt rows of later prefill chunks (chunked prefill)
  std::vector<float> e, s, warm;  // [rows, d] of the current token; warm: [d]
  int64_t pos = 0;                // position of the current token's first row
  int64_t rows = 0;
  int64_t step = 0;                // iterations done on the current token
  bool starting = true;            // the next tick starts a token (prelude + initial state)
  bool done = false;               // finished: the result is ready
  bool have_logits = false;        // this step ran a logit check (its logits are with the backend)
  bool logits_from_check = false;  // ... and came from the exit step's check
  policy::Decision decision;
  std::chrono::steady_clock::time_point t0;
  AdaptiveResult result;

  const float* last_row() const { return s.data() + (rows - 1) * (s.size() / rows); }
};

DepthBatcher::DepthBatcher(Backend& model, double (*now)())
    : model_(model),
      now_(now != nullptr ? now : &MonotonicSeconds),
      pool_(model.config().n_embd, model.page_memory()) {}

DepthBatcher::~DepthBatcher() = default;

Result<DepthBatcher::Id> DepthBatcher::Add(SequenceSpec spec) {
  const model::Config& cfg = model_.config();
  const policy::DepthPlan& plan = spec.plan;
  if (spec.prompt.empty()) return InvalidArgument("generate: the prompt has no tokens");
  if (plan.max_steps < 1 || plan.min_steps < 1 || plan.min_steps > plan.max_steps) {
    return InvalidArgument("generate: the plan's steps must satisfy 1 <= min <= max");
  }
  if (spec.options.max_tokens < 1) return InvalidArgument("generate: max_tokens must be >= 1");
  if (static_cast<int64_t>(spec.prompt.size()) >= cfg.block_size) {
    return OutOfRange("generate: prompt of " + std::to_string(spec.prompt.size()) +
                      " tokens leaves no room in the context of " + std::to_string(cfg.block_size));
  }
  for (size_t i = 0; i < spec.prompt.size(); ++i) {
    if (spec.prompt[i] < 0 || spec.prompt[i] >= cfg.vocab_size) {
      return InvalidArgument("generate: prompt token " + std::to_string(i) + " is id " +
                             std::to_string(spec.prompt[i]) + ", outside the vocabulary of " +
                             std::to_string(cfg.vocab_size));
    }
  }
  const KvStrategy kv = spec.options.kv;
  auto q = std::make_unique<Seq>(std::move(spec), model_.NewCache(kv, &pool_));
  q->history = model_.NewLogitHistory();
  q->rng = q->spec.options.seed ^ 0x5851f42d4c957f2dull;
  q->input = q->spec.prompt;
  if (prefill_chunk_ > 0 && static_cast<int64_t>(q->input.size()) > prefill_chunk_) {
    q->pending.assign(q->input.begin() + prefill_chunk_, q->input.end());
    q->input.resize(prefill_chunk_);
  }
  const Id id = next_id_++;
  q->id = id;
  seqs_.emplace(id, std::move(q));
  order_.push_back(id);
  ++active_;
  return id;
}

bool DepthBatcher::Remove(Id id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return false;
  if (!it->second->done) --active_;
  seqs_.erase(it);  // frees the KV cache
  order_.erase(std::remove(order_.begin(), order_.end(), id), order_.end());
  finished_.erase(std::remove(finished_.begin(), finished_.end(), id), finished_.end());
  return true;
}

bool DepthBatcher::finished(Id id) const {
  auto it = seqs_.find(id);
  return it != seqs_.end() && it->second->done;
}

std::vector<DepthBatcher::Id> DepthBatcher::FinishedIds() const { return finished_; }

Result<AdaptiveResult> DepthBatcher::TakeResult(Id id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end() || !it->second->done) {
    return NotFound("no finished sequence " + std::to_string(id));
  }
  AdaptiveResult r = std::move(it->second->result);
  Remove(id);
  return r;
}

void DepthBatcher::SetControl(Id id, const SequenceControl& control) {
  auto it = seqs_.find(id);
  if (it != seqs_.end()) it->second->control = control;
}

uint64_t DepthBatcher::kv_bytes(Id id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? 0 : it->second->cache->bytes();
}

uint64_t DepthBatcher::kv_bytes() const { return pool_.bytes_in_use(); }

Status DepthBatcher::StartTokens(std::vector<Seq*>& starting) {
  if (starting.empty()) return Status::Ok();
  const int64_t d = model_.config().n_embd;
  chunks_.clear();
  tokens_.clear();
  for (Seq* q : starting) {
    q->pos = q->cache->tokens();
    q->rows = static_cast<int64_t>(q->input.size());
    chunks_.push_back({q->cache.get(), q->pos, q->rows});
    tokens_.insert(tokens_.end(), q->input.begin(), q->input.end());
  }
  const int64_t n = static_cast<int64_t>(tokens_.size());
  e_.resize(n * d);
  PONDER_RETURN_IF_ERROR(model_.Prelude(chunks_, tokens_, e_.data()));
  int64_t row = 0;
  for (size_t i = 0; i < starting.size(); ++i) {
    Seq& q = *starting[i];
    q.e.assign(e_.begin() + row * d, e_.begin() + (row + q.rows) * d);
    q.s.resize(q.rows * d);
    if (q.spec.plan.warm_start && !q.result.tokens.empty()) {
      std::copy(q.warm.begin(), q.warm.end(), q.s.begin());  // continuous chain of thought
    } else {
      model_.InitState(std::span<const Chunk>(&chunks_[i], 1), q.spec.options.seed, 0,
                       q.spec.options.init_scale, q.s.data());
    }
    row += q.rows;
    q.controller.BeginToken();
    q.tracker.Begin(std::span<const float>(q.last_row(), d));
    q.history->Reset();
    q.step = 0;
    q.starting = false;
    q.have_logits = false;
    q.t0 = std::chrono::steady_clock::now();
  }
  return Status::Ok();
}

void DepthBatcher::Finish(Seq& q) {
  q.done = true;
  --active_;
  finished_.push_back(q.id);
  q.result.checks = q.controller.total_counts();
  q.result.kv_bytes = q.cache->bytes();
  q.e.clear();
  q.s.clear();
}

void DepthBatcher::EmitToken(Seq& q, const float* logits) {
  const model::Config& cfg = model_.config();
  const int64_t d = cfg.n_embd;
  const auto vocab = static_cast<size_t>(cfg.vocab_size);
  if (q.spec.plan.warm_start) q.warm.assign(q.last_row(), q.last_row() + d);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - q.t0).count();
  const policy::CheckCounts& checks = q.controller.token_counts();
  if (!q.pending.empty() && q.decision.reason != policy::ExitReason::kDeadline) {
    // A prompt chunk before the last: its keys and values are cached; no token. The next
    // chunk starts at the next tick.
    q.result.prefill_chunks.push_back({q.rows, q.step, static_cast<int32_t>(checks.latent_checks),
                                       static_cast<int32_t>(checks.logit_checks),
                                       q.logits_from_check});
    q.result.prompt_steps += q.step;
    q.result.prefill_seconds += secs;
    const size_t take = std::min<size_t>(q.pending.size(), static_cast<size_t>(prefill_chunk_));
    q.input.assign(q.pending.begin(), q.pending.begin() + take);
    q.pending.erase(q.pending.begin(), q.pending.begin() + take);
    q.starting = true;
    return;
  }
  if (!q.pending.empty()) {  // over its deadline inside the prompt: ends with no token
    q.result.finish_reason = "deadline";
    Finish(q);
    return;
  }
  if (q.result.tokens.empty()) q.result.prompt_steps += q.step;
  const int32_t next =
      Sample(std::span<const float>(logits, vocab), q.spec.options.sampling, q.rng);
  (q.result.tokens.empty() ? q.result.prefill_seconds : q.result.decode_seconds) += secs;
  q.result.tokens.push_back({next, q.step, q.decision.reason,
                             static_cast<int32_t>(checks.latent_checks),
                             static_cast<int32_t>(checks.logit_checks), q.logits_from_check});
  if (q.spec.on_token) q.spec.on_token(q.result.tokens.back());
  const auto& stops = q.spec.options.stop_ids;
  if (std::find(stops.begin(), stops.end(), next) != stops.end()) {
    q.result.finish_reason = "stop";
  } else if (q.decision.reason == policy::ExitReason::kDeadline) {
    q.result.finish_reason = "deadline";  // over its deadline: end with what it has
  } else if (static_cast<int64_t>(q.result.tokens.size()) >= q.spec.options.max_tokens ||
             q.cache->tokens() + 1 >= cfg.block_size) {
    q.result.finish_reason = "length";
  }
  if (!q.result.finish_reason.empty()) {
    Finish(q);
    return;
  }
  q.input.assign(1, next);
  q.starting = true;
}

Status DepthBatcher::Tick() {
  const model::Config& cfg = model_.config();
  const int64_t d = cfg.n_embd;
  const int64_t v = cfg.padded_vocab_size;
  std::vector<Seq*> run, starting;
  for (Id id : order_) {
    Seq* q = seqs_.at(id).get();
    if (q->done) continue;
    run.push_back(q);
    if (q->starting) starting.push_back(q);
  }
  // Lockstep: while any active sequence is inside a token, those about to start one wait.
  if (lockstep_ && !starting.empty() && starting.size() < run.size()) {
    run.erase(std::remove_if(run.begin(), run.end(), [](const Seq* q) { return q->starting; }),
              run.end());
    starting.clear();
  }
  last_tick_rows_ = 0;
  last_tick_tokens_ = 0;
  if (run.empty()) return Status::Ok();
  PONDER_RETURN_IF_ERROR(StartTokens(starting));

  // One core iteration for every active sequence, each at its own depth.
  chunks_.clear();
  iterations_.clear();
  int64_t n = 0;
  for (Seq* q : run) {
    chunks_.push_back({q->cache.get(), q->pos, q->rows});
    iterations_.push_back(q->step + 1);
    n += q->rows;
  }
  e_.resize(n * d);
  s_.resize(n * d);
  int64_t row = 0;
  for (Seq* q : run) {
    std::memcpy(&e_[row * d], q->e.data(), q->rows * d * sizeof(float));
    std::memcpy(&s_[row * d], q->s.data(), q->rows * d * sizeof(float));
    row += q->rows;
  }
  model_.CoreStep(chunks_, iterations_, e_.data(), s_.data());
  last_tick_tokens_ = n;
  row = 0;
  for (Seq* q : run) {
    std::memcpy(q->s.data(), &s_[row * d], q->rows * d * sizeof(float));
    row += q->rows;
    ++q->step;
    q->have_logits = false;
  }
  last_tick_rows_ = static_cast<int64_t>(run.size());

  // Each sequence's check: latent signals from its own state; logit checks batched.
  std::vector<policy::StepInput> inputs(run.size());
  std::vector<size_t> want_logits;
  for (size_t i = 0; i < run.size(); ++i) {
    Seq& q = *run[i];
    const policy::CheckNeed need = q.controller.Need(static_cast<int>(q.step));
    policy::StepInput& in = inputs[i];
    in.step = static_cast<int>(q.step);
    in.now = now_();
    in.load_cap = q.control.load_cap;
    in.budget_exhausted = q.control.budget_exhausted;
    if (need.latent || need.gated) {
      const auto lat = q.tracker.ObserveLatent(std::span<const float>(q.last_row(), d));
      in.signals.latent_diff = lat.latent_diff;
      in.signals.cosine = lat.cosine;
    }
    if (need.logits && (!need.gated || q.controller.GateOpen(*in.signals.latent_diff))) {
      want_logits.push_back(i);
    }
  }
  // The batch's state rows of the sequences `which`, as chunks_ and s_.
  auto gather = [&](const std::vector<size_t>& which) {
    chunks_.clear();
    int64_t rows = 0;
    for (size_t i : which) rows += run[i]->rows;
    s_.resize(rows * d);
    rows = 0;
    for (size_t i : which) {
      Seq& q = *run[i];
      chunks_.push_back({q.cache.get(), q.pos, q.rows});
      std::memcpy(&s_[rows * d], q.s.data(), q.rows * d * sizeof(float));
      rows += q.rows;
    }
  };
  // Logit checks, batched: the backend computes each rule's value where the logits are.
  std::vector<double> values(want_logits.size());
  if (!want_logits.empty()) {
    gather(want_logits);
    std::vector<LogitCheck> checks;
    for (size_t i : want_logits) checks.push_back({run[i]->history.get(), run[i]->spec.plan.rule});
    model_.CodaChecks(chunks_, s_.data(), checks, values.data());
  }
  std::vector<size_t> exiting, need_head, from_check;  // from_check: indices into want_logits
  for (size_t i = 0, k = 0; i < run.size(); ++i) {
    Seq& q = *run[i];
    policy::StepInput& in = inputs[i];
    size_t check = 0;  // this sequence's index in want_logits, when it ran a check
    if (k < want_logits.size() && want_logits[k] == i) {
      q.have_logits = true;
      check = k;
      const double val = values[k++];
      if (q.spec.plan.rule == policy::ExitRule::kArgmaxStability) {
        in.signals.argmax = static_cast<int64_t>(val);
      } else {
        in.signals.logit_value = val;
      }
    }
    q.decision = q.controller.Decide(in);
    if (q.decision.action != policy::Action::kExit && q.step >= q.spec.plan.max_steps) {
      q.decision.action = policy::Action::kExit;  // never run past max_steps
      q.decision.reason = policy::ExitReason::kMaxSteps;
    }
    if (q.decision.action == policy::Action::kExit) {
      exiting.push_back(i);
      if (q.have_logits) {
        from_check.push_back(check);
      } else {
        need_head.push_back(i);
      }
    }
  }
  // Exiting tokens sample from their check's logits (fetched first: anything that runs the
  // coda replaces them), or from one coda + head pass now, each read where it lands in
  // logits_.
  logits_.resize((from_check.size() + need_head.size()) * v);
  std::vector<const float*> logits_of(run.size(), nullptr);
  if (!from_check.empty()) {
    model_.LastLogits(from_check, logits_.data());
    for (size_t k = 0; k < from_check.size(); ++k) {
      logits_of[want_logits[from_check[k]]] = logits_.data() + k * v;
    }
  }
  if (!need_head.empty()) {
    float* head = logits_.data() + from_check.size() * v;
    gather(need_head);
    model_.Coda(chunks_, s_.data(), /*last_only=*/true, head);
    for (size_t k = 0; k < need_head.size(); ++k) logits_of[need_head[k]] = head + k * v;
  }
  for (size_t i : exiting) run[i]->logits_from_check = run[i]->have_logits;
  for (size_t i : exiting) EmitToken(*run[i], logits_of[i]);
  return Status::Ok();
}

}  // namespace ponder::exec
