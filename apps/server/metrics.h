#pragma once

// GET /metrics of `ponder serve` until the telemetry module's Prometheus registry replaces
// it: a few gauges and counters from Engine::Stats in the Prometheus text format (0.0.4),
// each labelled with model_name.

#include <string>

#include "exec/engine.h"

namespace ponder::apps::server {

// `stats` is null while the engine loads (only ponder_engine_ready 0 is written then).
std::string RenderMetrics(const std::string& model_name, const exec::EngineStats* stats);

}  // namespace ponder::apps::server
