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
  // A prompt prefilled in chunks: a pass per chunk before the last.
  int64_t position = 0;
  for (const exec::PrefillChunk& c : result.prefill_chunks) {
    telemetry::PassWork p;
    p.position = position;
    p.rows = c.rows;
    p.steps = c.steps;
    p.latent_checks = c.latent_checks;
    p.logit_checks = c.logit_checks;
    p.output_from_check = c.logits_from_check;
    passes.push_back(p);
    position += c.rows;
  }
  for (size_t i = 0; i < result.tokens.size(); ++i) {
    const exec::TokenTrace& t = result.tokens[i];
    telemetry::PassWork p;
    p.position = i == 0 ? position : prompt_rows + static_cast<int64_t>(i) - 1;
    p.rows = i == 0 ? prompt_rows - position : 1;
    p.steps = t.steps;
    p.latent_checks = t.latent_checks;
    p.logit_checks = t.logit_checks;
    p.output_from_check = t.logits_from_check;
    passes.push_back(p);
  }
  return passes;
}

}  // namespace ponder::exec
