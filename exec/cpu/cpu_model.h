#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "exec/backend.h"
#include "exec/cpu/kernels.h"
#include "exec/kv_cache.h"
#include "model/config.h"
#include "model/weights.h"

namespace ponder::exec::cpu {

using exec::Chunk;

// The Huginn forward pass (reference/huginn.md §3) on the CPU: the Backend contract with
// Eigen and oneTBB. The model does not own the weights (they usually point into the loaded
// checkpoint). Not thread-safe: one caller drives a CpuModel at a time (it reuses scratch
// buffers).
class CpuModel : public Backend {
 public:
  // Runs on `pool` (not owned; null: the calling thread only).
  CpuModel(const model::Config& config, const model::Weights& weights, ThreadPool* pool);
  // Runs on a pool of its own with `threads` workers (0: all hardware threads).
  CpuModel(const model::Config& config, const model::Weights& weights, int threads);

  std::string name() const override { return "cpu"; }
  ThreadPool* pool() const { return pool_; }

  // Embeds tokens (x embed_scale) and runs the prelude; writes prelude KV.
  // tokens: [N] ids < padded_vocab_size; e: [N, d].
  [[nodiscard]] Status Prelude(std::span<const Chunk> chunks, std::span<const int32_t> tokens,
                               float* e) override;

  // One core iteration: s <- core_block(adapter(cat[s, e])). iterations[b] (>= 1) is the
  // 1-based iteration chunk b is computing; it selects its KV slots. s, e: [N, d].
  void CoreStep(std::span<const Chunk> chunks, std::span<const int64_t> iterations, const float* e,
                float* s) override;

  // ln_f, coda (writes coda KV for every row), ln_f, head. logits receives the rows
  // selected by `last_only` (true: the last row of each chunk -> [B, V]; false: every
  // row -> [N, V]). s is not modified. logits may be null (coda KV only).
  void Coda(std::span<const Chunk> chunks, const float* s, bool last_only, float* logits) override;

  // Batch invariance (default on): every row's arithmetic is the same whatever else shares
  // the call, so batched serving gives exactly the batch-1 tokens and exit steps. Linear
  // weights are then packed (transposed f32, up to 256 MiB in all) for LinearPacked, the
  // rest stream in slices of 64 rows. Off, batches above 64 rows take the GEMM path.
  void set_batch_invariant(bool on) override { batch_invariant_ = on; }
  bool batch_invariant() const override { return batch_invariant_; }

 private:
  void Lin(const float* x, int64_t n, int64_t ldx, const TensorView& w, float* y, int64_t ldy);
  void Block(std::span<const Chunk> chunks, const model::BlockWeights& w,
             std::span<KvSlot* const> slots, float* x);
  void Attention(std::span<const Chunk> chunks, std::span<KvSlot* const> slots,
                 const model::BlockWeights& w, float* qkv, float* out);

  std::unique_ptr<ThreadPool> own_pool_;
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
