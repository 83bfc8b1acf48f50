#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "exec/cpu/kernels.h"
#include "exec/kv_cache.h"
#include "model/config.h"
#include "model/weights.h"

namespace ponder::exec::cpu {

// A run of new tokens of one sequence inside a batched call. Rows of all chunks are
// concatenated in call order: chunk b owns rows [row_offset(b), row_offset(b) + count).
struct Chunk {
  SequenceCache* cache = nullptr;  // the sequence's KV cache (not owned)
  int64_t pos = 0;                 // position of the first new token
  int64_t count = 0;               // number of new tokens (>= 1)
};

// The Huginn forward pass (reference/huginn.md §3) on the CPU, phase by phase, for a
// batch of sequences of different lengths and, in CoreStep, different depths. The model
// does not own the weights (they usually point into the loaded checkpoint) nor the pool.
// Not thread-safe: one caller drives a CpuModel at a time (it reuses scratch buffers).
//
// Shapes: N = total new rows of the call, d = n_embd, V = padded_vocab_size.
class CpuModel {
 public:
  CpuModel(const model::Config& config, const model::Weights& weights, ThreadPool* pool);

  const model::Config& config() const { return config_; }
  ThreadPool* pool() const { return pool_; }

  // Embeds tokens (x embed_scale) and runs the prelude; writes prelude KV.
  // tokens: [N] ids < padded_vocab_size; e: [N, d].
  [[nodiscard]] Status Prelude(std::span<const Chunk> chunks, std::span<const int32_t> tokens,
                               float* e);

  // Initial latent state for row positions: truncated normal (std init_std, cut at
  // +-3 std) x embed_scale x scale; scale 0 gives zeros. Each row's values depend only
  // on (seed, position of the row, `stream`), never on its batch neighbours.
  void InitState(std::span<const Chunk> chunks, uint64_t seed, uint64_t stream, double scale,
                 float* s) const;

  // One core iteration: s <- core_block(adapter(cat[s, e])). iterations[b] (>= 1) is the
  // 1-based iteration chunk b is computing; it selects its KV slots. s, e: [N, d].
  void CoreStep(std::span<const Chunk> chunks, std::span<const int64_t> iterations, const float* e,
                float* s);

  // ln_f, coda (writes coda KV for every row), ln_f, head. logits receives the rows
  // selected by `last_only` (true: the last row of each chunk -> [B, V]; false: every
  // row -> [N, V]). s is not modified. logits may be null (coda KV only).
  void Coda(std::span<const Chunk> chunks, const float* s, bool last_only, float* logits);

  // Convenience: the full forward of one sequence at `steps` iterations from a given
  // state (or InitState with seed/scale when `state` is null), appending to the cache.
  // Returns logits of every new row, [count, V]; `final_state` (if not null) receives
  // the last core iteration's output, [count, d].
  [[nodiscard]] Result<std::vector<float>> Forward(SequenceCache& cache,
                                                   std::span<const int32_t> tokens, int64_t steps,
                                                   const float* state, uint64_t seed,
                                                   double init_scale,
                                                   std::vector<float>* final_state = nullptr);

  // Batch invariance (default on): every row's arithmetic is the same whatever else shares
  // the call, so batched serving gives exactly the batch-1 tokens and exit steps. Linear
  // weights are then packed (transposed f32, up to 256 MiB in all) for LinearPacked, the
  // rest stream in slices of 64 rows. Off, batches above 64 rows take the GEMM path.
  void set_batch_invariant(bool on) { batch_invariant_ = on; }
  bool batch_invariant() const { return batch_invariant_; }

  // A fresh cache for one sequence.
  // A cache for this model; its pages come from `pool` (null: a pool of its own).
  std::unique_ptr<SequenceCache> NewCache(KvStrategy strategy = {},
                                          KvPagePool* pool = nullptr) const;

 private:
  void Lin(const float* x, int64_t n, int64_t ldx, const TensorView& w, float* y, int64_t ldy);
  void Block(std::span<const Chunk> chunks, const model::BlockWeights& w,
             std::span<KvSlot* const> slots, float* x);
  void Attention(std::span<const Chunk> chunks, std::span<KvSlot* const> slots,
                 const model::BlockWeights& w, float* qkv, float* out);

  const model::Config& config_;
  const model::Weights& weights_;
  ThreadPool* pool_;
  bool batch_invariant_ = true;
  // Linear weights packed for LinearPacked (batch-invariant mode), by their data pointer;
  // packed on first use while the total stays under kMaxPackedBytes, the rest stream.
  std::unordered_map<const void*, PackedLinear> packed_;
  uint64_t packed_bytes_ = 0;
  static constexpr uint64_t kMaxPackedBytes = 256ull << 20;
  int64_t d_, heads_, head_dim_, ffn_;
  std::vector<float> rope_cos_, rope_sin_;  // [block_size, head_dim / 2]
  // Set while CoreStep runs a core layer: attention then resolves past tokens that ran
  // fewer iterations (see SequenceCache::depth).
  const int64_t* core_iterations_ = nullptr;
  int64_t core_layer_ = -1;
  std::vector<std::vector<float>> gathered_k_, gathered_v_;
  // Scratch, grown on demand.
  std::vector<float> h_, qkv_, attn_, tmp_, ffn_buf_, cat_, scores_;
  std::vector<KvSlot*> slot_ptrs_;
};

}  // namespace ponder::exec::cpu
