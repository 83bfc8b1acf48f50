#pragma once

// The executor contract (DESIGN.md "Backend"): the forward pass of a Huginn-layout model
// phase by phase, for a batch of sequences of different lengths and, in CoreStep, different
// depths. A backend computes what the scheduler asks and decides nothing. Implementations:
// cpu::CpuModel (Eigen + oneTBB) and, in builds with CUDA, cuda::CudaModel. MakeBackend
// chooses one by name.
//
// Activations cross the contract as host f32 rows: N = total new rows of a call,
// d = n_embd, V = padded_vocab_size. Keys and values stay where the backend keeps them: a
// sequence's SequenceCache takes its pages from a KvPagePool whose memory the backend
// provides (host memory for the CPU, device memory for CUDA); only the backend reads them.

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "exec/kv_cache.h"
#include "model/config.h"
#include "model/weights.h"
#include "policy/criteria.h"

namespace ponder::exec {

// A run of new tokens of one sequence inside a batched call (the chunks of a call belong to
// distinct sequences). Rows of all chunks are concatenated in call order: chunk b owns rows
// [row_offset(b), row_offset(b) + count).
struct Chunk {
  SequenceCache* cache = nullptr;  // the sequence's KV cache (not owned)
  int64_t pos = 0;                 // position of the first new token
  int64_t count = 0;               // number of new tokens (>= 1)
};

// Rows of a batched call: the chunks' new tokens.
inline int64_t TotalRows(std::span<const Chunk> chunks) {
  int64_t n = 0;
  for (const Chunk& c : chunks) n += c.count;
  return n;
}

// The previous logit check of one sequence's current token, kept where the backend keeps
// logits (a logit rule compares each check with the one before: policy/criteria.h). Made
// by Backend::NewLogitHistory and used only with that backend.
class LogitHistory {
 public:
  virtual ~LogitHistory() = default;
  // Forgets the checks (a new token): the next one compares with the rule's start, the
  // uniform distribution or entropy 100 (policy::SignalTracker).
  virtual void Reset() = 0;
};

// The history the host computation keeps (Backend's default CodaChecks): the signal
// tracker's previous log-probabilities and entropy.
class TrackedLogitHistory : public LogitHistory {
 public:
  void Reset() override { tracker.Begin({}); }
  policy::SignalTracker tracker;
};

// One sequence's logit check in Backend::CodaChecks.
struct LogitCheck {
  LogitHistory* history = nullptr;  // the sequence's; this check replaces its previous one
  policy::ExitRule rule = policy::ExitRule::kKl;  // kl, minp-kl, entropy-diff, argmax-stability
};

class Backend {
 public:
  Backend(const model::Config& config, const model::Weights& weights)
      : config_(config), weights_(weights) {}
  virtual ~Backend() = default;
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  const model::Config& config() const { return config_; }
  const model::Weights& weights() const { return weights_; }
  // "cpu" or "cuda".
  virtual std::string name() const = 0;

  // Embeds tokens (x embed_scale) and runs the prelude; writes prelude KV.
  // tokens: [N] ids < padded_vocab_size; e: [N, d]. Bad ids or positions: an error.
  [[nodiscard]] virtual Status Prelude(std::span<const Chunk> chunks,
                                       std::span<const int32_t> tokens, float* e) = 0;

  // One core iteration: s <- core_block(adapter(cat[s, e])). iterations[b] (>= 1) is the
  // 1-based iteration chunk b is computing; it selects its KV slots. s, e: [N, d].
  virtual void CoreStep(std::span<const Chunk> chunks, std::span<const int64_t> iterations,
                        const float* e, float* s) = 0;

  // `steps` (>= 1) core iterations in a row: the same as CoreStep with iterations[b], then
  // iterations[b] + 1, ..., for a caller that needs neither the state nor an exit signal in
  // between; s receives the last one's output. The default calls CoreStep `steps` times; a
  // backend whose state lives elsewhere (CUDA) keeps it there until the last.
  virtual void CoreSteps(std::span<const Chunk> chunks, std::span<const int64_t> iterations,
                         int64_t steps, const float* e, float* s);

  // ln_f, coda (writes coda KV for every row), ln_f, head. logits receives the rows
  // selected by `last_only` (true: the last row of each chunk -> [B, V]; false: every
  // row -> [N, V]). s is not modified. logits may be null (coda KV only).
  virtual void Coda(std::span<const Chunk> chunks, const float* s, bool last_only,
                    float* logits) = 0;

  // Exit checks of logit rules: Coda (coda KV for every row), then for the last row of each
  // chunk b the value of checks[b].rule on its head output against that sequence's previous
  // check, which this one replaces (as policy::SignalTracker::ObserveLogits: kl, minp-kl and
  // entropy-diff values; argmax-stability: the argmax). values: [B]. The logits stay with
  // the backend until its next Coda or CodaChecks: LastLogits copies rows of them out. The
  // default computes on the host from Coda's logits; a backend whose logits live in device
  // memory computes there and sends back only the values.
  virtual void CodaChecks(std::span<const Chunk> chunks, const float* s,
                          std::span<const LogitCheck> checks, double* values);
  // Rows `which` (chunk indices of the last CodaChecks) of its logits: [which.size(), V].
  virtual void LastLogits(std::span<const size_t> which, float* logits);
  // A history for one sequence's logit checks with this backend (the default: a
  // TrackedLogitHistory; a backend's own must derive from it if it may compute on the host).
  virtual std::unique_ptr<LogitHistory> NewLogitHistory();

  // Batch invariance: every row's arithmetic is the same whatever else shares the call, so
  // batched serving gives exactly the batch-1 tokens and exit steps. Backends that cannot
  // promise it say so (batch_invariant() stays false).
  virtual void set_batch_invariant(bool on) = 0;
  virtual bool batch_invariant() const = 0;

  // Initial latent state for row positions: truncated normal (std init_std, cut at
  // +-3 std) x embed_scale x scale; scale 0 gives zeros. Each row's values depend only
  // on (seed, position of the row, `stream`), never on its batch neighbours, and are the
  // same on every backend.
  void InitState(std::span<const Chunk> chunks, uint64_t seed, uint64_t stream, double scale,
                 float* s) const;

  // The memory KV pages live in (null: host memory).
  virtual PageMemory* page_memory() { return nullptr; }
  // A page pool for this backend's caches.
  std::unique_ptr<KvPagePool> NewPagePool() {
    return std::make_unique<KvPagePool>(config_.n_embd, page_memory());
  }
  // A cache for one sequence; its pages come from `pool` (null: a pool of its own, in this
  // backend's page memory).
  std::unique_ptr<SequenceCache> NewCache(KvStrategy strategy = {}, KvPagePool* pool = nullptr);

  // Convenience: the full forward of one sequence at `steps` iterations from a given
  // state (or InitState with seed/scale when `state` is null), appending to the cache.
  // Returns logits of every new row, [count, V]; `final_state` (if not null) receives
  // the last core iteration's output, [count, d].
  [[nodiscard]] Result<std::vector<float>> Forward(SequenceCache& cache,
                                                   std::span<const int32_t> tokens, int64_t steps,
                                                   const float* state, uint64_t seed,
                                                   double init_scale,
                                                   std::vector<float>* final_state = nullptr);

 protected:
  // What every backend records in the caches after a phase: the depth each new row ran
  // (after CoreStep), and the tokens whose coda rows are written (after Coda).
  static void RecordDepths(std::span<const Chunk> chunks, std::span<const int64_t> iterations);
  static void RecordTokens(std::span<const Chunk> chunks);

  // Checks a prelude call's rows, positions and ids (the same rule on every backend).
  [[nodiscard]] Status CheckPrelude(std::span<const Chunk> chunks,
                                    std::span<const int32_t> tokens) const;

  const model::Config& config_;
  const model::Weights& weights_;

 private:
  std::vector<float> check_logits_;  // the last CodaChecks' logits (host computation)
};

// RoPE on adjacent pairs: cos and sin of angle(p, i) = p / base^(2i / head_dim) for every
// position p < block_size, [block_size, head_dim / 2]. As the reference, the inverse
// frequencies and the angles are f32 values (this matters at long positions: the angle's
// rounding is part of the trained model). Every backend rotates with these tables.
void RopeTables(const model::Config& config, std::vector<float>* cos, std::vector<float>* sin);

// Which backend to build, and its settings.
struct BackendOptions {
  std::string kind = "cpu";           // "cpu" or "cuda"
  int threads = 0;                    // CPU worker threads (0: all hardware threads)
  int device = 0;                     // CUDA device ordinal
  std::string cuda_weights = "bf16";  // CUDA weight storage: "bf16" or "f32" (f32 accumulation)
  // CUDA settings that have not yet run on a GPU in this version, off by default
  // (bench/gpu/README.md): MmaKernel for products of up to this many rows (4 to 32; 0: off;
  // -1: the backend's default), programmatic dependent launch between kernels, the logit
  // checks' values computed on the device, and the small kernels' lean forms (norms holding
  // their row in registers; RoPE and attention in one kernel in decode).
  int cuda_mma_rows = -1;
  bool cuda_pdl = false;
  bool cuda_device_signals = false;
  bool cuda_lean_kernels = false;
};

// The backend `options.kind` on the given weights (which must outlive it). An unknown
// kind, a build without CUDA, or no usable device is an error that says which.
[[nodiscard]] Result<std::unique_ptr<Backend>> MakeBackend(const BackendOptions& options,
                                                           const model::Config& config,
                                                           const model::Weights& weights);

// Names MakeBackend accepts in this build.
std::vector<std::string> BackendKinds();

}  // namespace ponder::exec
