#pragma once

// Continuous depth batching: the mechanism under the scheduler. Every Tick runs ONE core
// iteration for every active sequence, whatever its depth; each sequence's ExitController
// then decides on that sequence's own signals whether its token is done; done tokens go
// through coda + head and are sampled, and the sequence starts its next token (prelude +
// initial state) in the next tick. Sequences may be added at any tick (they take part
// from that tick on) and removed at any time (their KV cache is freed at once).
//
// Batch-1 equality: a sequence's tokens, per-token steps and exit reasons are the same
// whatever else shares its ticks, because (1) its exit decisions read only its own
// signals, (2) its initial states and samples come from its own seed, and (3) the model's
// per-row arithmetic does not depend on the batch (Backend::batch_invariant). The
// batch-1 path (GenerateAdaptive) is this class with one sequence.

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "exec/adaptive.h"
#include "exec/backend.h"
#include "exec/kv_cache.h"
#include "policy/exit_controller.h"
#include "policy/plan.h"

namespace ponder::exec {

// One sequence to decode.
struct SequenceSpec {
  std::vector<int32_t> prompt;
  policy::DepthPlan plan;
  AdaptiveOptions options;
  // Called after each token with its trace (the token, its steps and exit reason).
  std::function<void(const TokenTrace&)> on_token;
};

// What the caller may change for a sequence between ticks (elastic depth, budgets).
struct SequenceControl {
  int load_cap = 0;               // lower the per-token cap (>= plan min) under load; 0 = none
  bool budget_exhausted = false;  // the tenant's budget ran out: stop iterating this token
};

class DepthBatcher {
 public:
  using Id = int64_t;

  // `now` gives seconds on the plans' clock (null: MonotonicSeconds).
  explicit DepthBatcher(Backend& model, double (*now)() = nullptr);
  ~DepthBatcher();
  DepthBatcher(const DepthBatcher&) = delete;
  DepthBatcher& operator=(const DepthBatcher&) = delete;

  // Validates and adds a sequence; it runs from the next Tick. Bad input (an empty or
  // too long prompt, an inconsistent plan, an unknown token id) is an error and adds
  // nothing.
  [[nodiscard]] Result<Id> Add(SequenceSpec spec);

  // Removes a sequence, finished or not, and frees its KV cache. Unknown ids: false.
  bool Remove(Id id);

  // One core iteration for every active sequence (plus the prelude of tokens starting,
  // and coda + sampling of tokens exiting). Sequences that finish are kept, with their
  // result, until TakeResult or Remove.
  [[nodiscard]] Status Tick();

  // Sequences that have not finished.
  int64_t active() const { return active_; }
  // Finished sequences not yet removed (TakeFinished).
  bool finished(Id id) const;
  // The result of a finished sequence, removing it. Unknown or unfinished: NotFound.
  [[nodiscard]] Result<AdaptiveResult> TakeResult(Id id);
  // Ids of sequences that finished and were not taken yet, in finishing order.
  std::vector<Id> FinishedIds() const;

  // Elastic controls for a sequence (ignored for unknown ids).
  void SetControl(Id id, const SequenceControl& control);

  // KV bytes held by one sequence and by all sequences (whole pages of the batcher's pool;
  // every sequence's cache takes its pages from it, so all of them is the pool's pages in use).
  uint64_t kv_bytes(Id id) const;
  uint64_t kv_bytes() const;
  // The page pool every sequence's cache takes its pages from.
  const KvPagePool& kv_pool() const { return pool_; }
  // Rows (sequences) that ran a core iteration in the last tick.
  int64_t last_tick_rows() const { return last_tick_rows_; }

  // Lockstep batching, the baseline continuous depth batching is measured against (off by
  // default): a sequence whose token exited (or that was just added) does not start its
  // next token until every active sequence's current token has exited, so that the batch
  // advances token by token at the pace of its deepest member. Waiting sequences run no
  // iteration; their tokens, steps and exit reasons are those of normal mode (a wait
  // changes only when a token starts, which no decision reads except through the clock:
  // deadlines). Takes effect at the next Tick.
  void set_lockstep(bool on) { lockstep_ = on; }
  bool lockstep() const { return lockstep_; }

  // Chunked prefill (0, the default: off): a prompt longer than `rows` tokens is prefilled
  // in passes of at most `rows` rows, so that a tick carries at most that many prompt rows
  // of a sequence and decodes running beside a long prompt are not held up by it. Each chunk
  // is a pass like a token's (prelude, core iterations until its last row exits by the plan,
  // coda for every row, which writes its keys and values); only the last chunk's output is
  // sampled. Later chunks read earlier ones through the cache as later tokens do (a chunk
  // that stopped sooner is read at its last iteration). At a fixed depth the result equals
  // the unchunked prefill; with per-token exits each chunk exits on its own last row, so the
  // chunk size is part of what determines the outputs (a sequence's result never depends on
  // its neighbours either way). Applies to sequences added afterwards.
  void set_prefill_chunk(int64_t rows) { prefill_chunk_ = rows; }
  int64_t prefill_chunk() const { return prefill_chunk_; }
  // Rows (tokens) that ran the last tick's core iteration, over all its sequences.
  int64_t last_tick_tokens() const { return last_tick_tokens_; }

 private:
  struct Seq;
  [[nodiscard]] Status StartTokens(std::vector<Seq*>& starting);
  void EmitToken(Seq& q, const float* logits);
  void Finish(Seq& q);  // done, with its result

  Backend& model_;
  double (*now_)();
  KvPagePool pool_;  // before seqs_: outlives the caches
  Id next_id_ = 1;
  std::unordered_map<Id, std::unique_ptr<Seq>> seqs_;
  std::vector<Id> order_;     // ids in the order they were added (tick order)
  std::vector<Id> finished_;  // finishing order
  int64_t active_ = 0;
  int64_t last_tick_rows_ = 0;
  int64_t last_tick_tokens_ = 0;
  bool lockstep_ = false;
  int64_t prefill_chunk_ = 0;
  // Scratch of the batched calls.
  std::vector<float> e_, s_, logits_;
  std::vector<Chunk> chunks_;
  std::vector<int32_t> tokens_;
  std::vector<int64_t> iterations_;
};

}  // namespace ponder::exec
