#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace ponder::model {

// One SandwichBlock. Shapes with d = n_embd, h = n_heads, hd = head_dim, f = intermediate:
struct BlockWeights {
  TensorView norm_1, norm_2, norm_3, norm_4;  // [d] each
  TensorView wqkv;                            // [3d, d]: rows q, k, v
  TensorView qk_bias;                         // [2, 1, h, hd] (q bias, k bias); empty if !qk_bias
  TensorView attn_proj;                       // [d, d]
  TensorView mlp_fc;                          // [2f, d]: rows 0..f-1 gate (SiLU), f..2f-1 up
  TensorView mlp_proj;                        // [d, f]
};

// The model's tensors, validated against a Config. Views point into the TensorStore, which
// must outlive this object (it owns the loaded files).
struct Weights {
  TensorView wte;      // [padded_vocab, d]
  TensorView adapter;  // [d, 2d]: columns 0..d-1 act on the state, d..2d-1 on the input
  TensorView ln_f;     // [d]
  TensorView lm_head;  // [padded_vocab, d]; equals wte when tied
  std::vector<BlockWeights> prelude, core, coda;

  std::vector<std::string> ignored;  // tensors present but not used (freqs_cis, tied copy)
  uint64_t weight_bytes = 0;         // bytes of the tensors used (tied head counted once)
};

// Maps names of reference/huginn.md §2 onto Weights. Missing tensors and unexpected
// tensors are errors (all of them listed); `freqs_cis` and a stored copy of the tied
// `lm_head.weight` are accepted and listed in `ignored`. Every shape is checked.
[[nodiscard]] Result<Weights> BindWeights(const Config& config, const TensorStore& store);

}  // namespace ponder::model
