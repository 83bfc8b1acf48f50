#include "exec/cost.h"

#include <algorithm>

#include "core/dtype.h"

namespace ponder::exec {

telemetry::ModelDims DimsOf(const model::Config& config) {
  telemetry::ModelDims d;
  d.n_embd = config.n_embd;
  d.n_heads = config.n_heads;
  d.n_kv_heads = config.num_key_value_heads > 0 ? config.num_key_value_heads : config.n_heads;
  d.head_dim = config.head_dim;
  d.intermediate_size = config.intermediate_size;
  d.padded_vocab_size = config.padded_vocab_size;
  d.n_prelude = config.n_layers_in_prelude;
  d.n_core = config.n_layers_in_recurrent_block;
  d.n_coda = config.n_layers_in_coda;
  d.qk_bias = config.qk_bias;
  d.weight_bytes_per_param = 4.0;
  d.kv_bytes_per_value = 4.0;
  return d;
}

telemetry::ModelDims DimsOf(const model::Config& config, const model::Weights& weights) {
  telemetry::ModelDims d = DimsOf(config);
  if (!weights.adapter.empty()) {
    d.weight_bytes_per_param = static_cast<double>(DTypeSize(weights.adapter.dtype));
  }
  return d;
}

std::vector<telemetry::PassWork> PassesOf(const exec::AdaptiveResult& result, int64_t prompt_rows) {
  std::vector<telemetry::PassWork> passes;
  auto add = [&](int64_t position, int64_t rows, int64_t steps, int64_t latent, int64_t logit,
                 bool from_check) {
    passes.push_back({.position = position,
                      .rows = rows,
                      .steps = steps,
                      .logit_checks = logit,
                      .latent_checks = latent,
                      .output_from_check = from_check});
  };
  // A prompt prefilled in chunks: a pass per chunk before the last.
  int64_t position = 0;
  for (const exec::PrefillChunk& c : result.prefill_chunks) {
    add(position, c.rows, c.steps, c.latent_checks, c.logit_checks, c.logits_from_check);
    position += c.rows;
  }
  for (size_t i = 0; i < result.tokens.size(); ++i) {
    const exec::TokenTrace& t = result.tokens[i];
    if (i == 0) {
      add(position, prompt_rows - position, t.steps, t.latent_checks, t.logit_checks,
          t.logits_from_check);
    } else {
      add(prompt_rows + static_cast<int64_t>(i) - 1, 1, t.steps, t.latent_checks, t.logit_checks,
          t.logits_from_check);
    }
  }
  return passes;
}

}  // namespace ponder::exec
