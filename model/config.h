#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"

namespace ponder::model {

// The most positions a config may declare (block_size): 1M.
inline constexpr int64_t kMaxBlockSize = int64_t{1} << 20;

// The fields of a Huginn-family HF `config.json` (model_type "huginn_raven") that the
// forward pass needs. Every field is read by name; layer counts come from the file.
struct Config {
  std::string model_type;           // "huginn_raven"
  int64_t n_embd = 0;               // hidden width (5280 for Huginn-0125)
  int64_t n_heads = 0;              // attention heads (55)
  int64_t num_key_value_heads = 0;  // must equal n_heads: no GQA in this family
  int64_t head_dim = 0;             // n_embd / n_heads (96)
  int64_t vocab_size = 0;           // tokenizer vocabulary (65536)
  int64_t padded_vocab_size = 0;    // rows of wte / lm_head (>= vocab_size)
  int64_t n_layers = 0;             // physical blocks = prelude + core + coda
  int64_t n_layers_in_prelude = 0;
  int64_t n_layers_in_recurrent_block = 0;  // the core block, iterated r times
  int64_t n_layers_in_coda = 0;
  int64_t intermediate_size = 0;  // gated MLP hidden width (17920)
  int64_t block_size = 0;         // max positions (4096)
  double rope_base = 50000.0;
  double norm_eps = 1e-6;        // RMSNorm epsilon
  bool bias = false;             // linear biases: only false is supported (as Huginn)
  bool qk_bias = true;           // learned additive bias on q and k before RoPE
  bool tie_embeddings = true;    // lm_head = wte when true
  int64_t mean_recurrence = 32;  // default number of core iterations at inference
  double init_std = 0.0;         // init_values.std, default sqrt(2 / (5 n_embd))
  double embed_scale = 0.0;      // init_values.embed_scale, default sqrt(n_embd)
  int64_t bos_token_id = -1;     // -1 when absent
  int64_t eos_token_id = -1;
  int64_t pad_token_id = -1;

  // Parameter counts. `Unique` counts stored parameters once (tied head once);
  // `Unrolled(r)` counts the core block r times: the compute-equivalent model size.
  int64_t BlockParams() const;
  int64_t UniqueParams() const;
  int64_t UnrolledParams(int64_t r) const;
};

// Parses config.json text. `source` names the file in error messages.
[[nodiscard]] Result<Config> ParseConfig(const std::string& json_text, const std::string& source);
// Reads `path` (a config.json file).
[[nodiscard]] Result<Config> LoadConfig(const std::string& path);

}  // namespace ponder::model
