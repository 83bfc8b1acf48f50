#pragma once

// Analytic cost of the Huginn forward pass (reference/huginn.md §3): FLOPs and bytes read
// per phase, per pass and per request. It depends on core only, so it takes the model's
// dimensions as a plain struct (exec/cost.h fills one from model::Config and
// model::Weights). See telemetry/README.md for the formulas with a worked example.
//
// Conventions
//  - A multiply-add is 2 FLOPs. Only matrix products and the reductions of the checks are
//    counted: RMSNorms, RoPE, the softmax, SiLU, residual adds and the embedding scale are
//    O(d) per row and are NOT counted (at ponder-micro's width, d = 128, they would add
//    about 1.3 % to a layer; at Huginn's, d = 5280, under 0.05 %).
//  - `context` L is the number of keys a row attends to, itself included: position + 1.
//    Attention is counted against those keys only (causal), whatever a kernel computes
//    for masked entries.
//  - Symbols: d = n_embd, H = n_heads, Hkv = n_kv_heads, hd = head_dim,
//    f = intermediate_size, V = padded_vocab_size, P/C/K = prelude/core/coda layers.
//
// FLOPs of one row:
//   layer(L)      = 2·d·(H + 2·Hkv)·hd      q, k, v projections (one fused Wqkv)
//                 + 2·H·hd·d                output projection
//                 + 4·L·H·hd                scores q·k (2·L·H·hd) + weighted sum of v (2·L·H·hd)
//                 + 6·d·f                   gated MLP: fc [d -> 2f] (4·d·f), proj [f -> d] (2·d·f)
//   embedding     = 0                       a row lookup
//   prelude(L)    = P · layer(L)
//   core(L)       = 4·d² + C · layer(L)     adapter [2d -> d] on cat[s, e], then the core block
//   coda(L)       = K · layer(L)            (ln_f before it: a norm, not counted)
//   head          = 2·d·V                   ln_f, then lm_head [d -> V]
//   token(L, r)   = prelude(L) + r·core(L) + coda(L) + head
//   logit check   = coda(L) + head          one extra coda + head pass (per row of the pass
//                                           for the coda; the head runs on the last row)
//   latent check  = 4·d                     two reductions over d: ||s_t - s_prev||², ||s_t||²
//
// Bytes of weights read (b = bytes per stored parameter) by one pass, whatever its rows:
//   layer   = b·((H + 2·Hkv)·hd·d + H·hd·d + 3·d·f + 4·d + [qk_bias] (H + Hkv)·hd)
//   prelude = P·layer; core = b·2·d² + C·layer; coda = b·d + K·layer (ln_f);
//   head = b·(V·d + d) (ln_f again); embedding = b·d per row (one row of wte).
// Bytes of cached keys and values read (kb = bytes per cached value; the CPU runtime caches
// f32): each layer of a pass reads the keys and values its last row attends to once,
//   2·L_last·Hkv·hd·kb.

#include <cstdint>
#include <span>
#include <vector>

#include "core/status.h"

namespace ponder::telemetry {

// The model dimensions the cost model needs (the fields of model::Config of the same
// meaning; see model/config.h).
struct ModelDims {
  int64_t n_embd = 0;                   // d
  int64_t n_heads = 0;                  // H, query heads
  int64_t n_kv_heads = 0;               // Hkv, key/value heads (== H in the Huginn family)
  int64_t head_dim = 0;                 // hd
  int64_t intermediate_size = 0;        // f, gated MLP width
  int64_t padded_vocab_size = 0;        // V, rows of lm_head
  int64_t n_prelude = 0;                // P, prelude layers
  int64_t n_core = 0;                   // C, layers of the core block (iterated r times)
  int64_t n_coda = 0;                   // K, coda layers
  bool qk_bias = true;                  // a learned [2, 1, H, hd] bias on q and k
  double weight_bytes_per_param = 4.0;  // b: stored dtype of the weights (f32 4, bf16 2)
  double kv_bytes_per_value = 4.0;      // kb: the runtime's KV cache dtype (CPU: f32)

  // Every count must be >= 1 (the layer counts >= 0); bytes > 0.
  [[nodiscard]] Status Validate() const;
};

// What some work costs. Units: FLOPs (a multiply-add is 2), bytes.
struct Cost {
  double flops = 0.0;
  double weight_bytes = 0.0;  // weights read
  double kv_bytes = 0.0;      // cached keys and values read by attention

  Cost& operator+=(const Cost& o) {
    flops += o.flops;
    weight_bytes += o.weight_bytes;
    kv_bytes += o.kv_bytes;
    return *this;
  }
  friend Cost operator+(Cost a, const Cost& b) { return a += b; }
  friend Cost operator*(Cost a, double k) {
    a.flops *= k;
    a.weight_bytes *= k;
    a.kv_bytes *= k;
    return a;
  }
};

// One forward pass of one sequence: `rows` new tokens at positions [position,
// position + rows) go through the prelude and `steps` core iterations together, then the
// coda (every row: it writes the coda's keys and values) and ln_f + head (the last row).
// The prefill is one pass of the prompt's rows; each later token is a pass of one row.
struct PassWork {
  int64_t position = 0;  // position of the first row (= tokens already in the cache)
  int64_t rows = 1;
  int64_t steps = 0;  // core iterations r
  // Exit checks run during the pass. A logit check is one coda (every row) + head (last
  // row); a latent check two reductions over d.
  int64_t logit_checks = 0;
  int64_t latent_checks = 0;
  // The last logit check's logits were the pass's output, so the runtime ran no separate
  // output coda + head (requires logit_checks >= 1).
  bool output_from_check = false;
};

// The passes' cost by phase of the forward (checks excluded): embedding + prelude, the core
// iterations (adapter + core block), and ln_f + coda + head.
struct PhaseCost {
  Cost prelude;
  Cost core;
  Cost coda_head;
  PhaseCost& operator+=(const PhaseCost& o) {
    prelude += o.prelude;
    core += o.core;
    coda_head += o.coda_head;
    return *this;
  }
};

// A request's cost, split as telemetry reports it: the passes themselves (as at fixed
// depth: one output coda + head each) and what the exit checks added on top.
struct RequestCost {
  Cost prefill;      // the first pass (the prompt's rows), without its checks
  Cost decode;       // every later pass, without their checks
  Cost checks;       // latent checks + logit checks beyond the one that gave a pass's output
  PhaseCost phases;  // prefill + decode by phase (prelude + core + coda_head == both)
  int64_t passes = 0;
  int64_t rows = 0;   // prompt rows + decoded rows
  int64_t steps = 0;  // core iterations of all passes (a pass counts its steps once)
  Cost total() const { return prefill + decode + checks; }
};

class CostModel {
 public:
  // `dims` must be valid (see ModelDims::Validate); use Create to check it.
  explicit CostModel(const ModelDims& dims) : dims_(dims) {}
  [[nodiscard]] static Result<CostModel> Create(const ModelDims& dims);

  const ModelDims& dims() const { return dims_; }

  // One row attending `context` keys (>= 1). Weight bytes are those one pass reads.
  Cost Embedding() const;
  Cost Layer(int64_t context) const;
  Cost Prelude(int64_t context) const;
  Cost CoreIteration(int64_t context) const;
  Cost Coda(int64_t context) const;  // ln_f + coda layers
  Cost Head() const;                 // ln_f + lm_head
  Cost LogitCheck(int64_t context) const { return Coda(context) + Head(); }
  Cost LatentCheck() const;
  // A token decoded alone at `context` with r = steps core iterations and no checks:
  // Embedding + Prelude + steps x CoreIteration + Coda + Head.
  Cost Token(int64_t context, int64_t steps) const;

  // One pass, its checks excluded (`checks`, when not null, receives their cost; `phases`,
  // when not null, the pass by phase).
  Cost Pass(const PassWork& pass, Cost* checks = nullptr, PhaseCost* phases = nullptr) const;
  // Every pass of a request, in order; passes[0] is the prefill.
  RequestCost Request(std::span<const PassWork> passes) const;

  // The passes of a request at fixed depth: the prompt (prompt_rows at prompt_steps),
  // then one row per later token at positions prompt_rows, prompt_rows + 1, ...
  // decode_steps[i] is the depth of the pass that reads generated token i (so a request
  // that generated T tokens ran T - 1 decode passes). No checks.
  static std::vector<PassWork> FixedPasses(int64_t prompt_rows, int64_t prompt_steps,
                                           std::span<const int64_t> decode_steps);

 private:
  // Layer FLOPs for `rows` rows at positions [position, position + rows): the attention
  // term summed over the rows' contexts.
  double LayerFlops(int64_t position, int64_t rows) const;
  double LayerWeightBytes() const;
  double LayerKvBytes(int64_t context) const;

  ModelDims dims_;
};

}  // namespace ponder::telemetry
