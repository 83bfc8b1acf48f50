#pragma once

// The glue between the runtime and telemetry's cost model (which depends on core only):
// the model's dimensions from its Config, and the passes of a request from what
// GenerateAdaptive reports of it.

#include <cstdint>
#include <vector>

#include "exec/adaptive.h"
#include "model/config.h"
#include "model/weights.h"
#include "telemetry/cost_model.h"

namespace ponder::exec {

// The cost model's dimensions of `config`. Weight bytes per parameter: 4 (f32) unless the
// weights are given (their adapter's dtype); the CPU runtime caches keys and values in f32.
telemetry::ModelDims DimsOf(const model::Config& config);
telemetry::ModelDims DimsOf(const model::Config& config, const model::Weights& weights);

// The passes of one request (pass i produced result.tokens[i]; pass 0 is the prefill of
// `prompt_rows` rows), with each token's own check counts as the runtime reports them.
std::vector<telemetry::PassWork> PassesOf(const exec::AdaptiveResult& result, int64_t prompt_rows);

}  // namespace ponder::exec
