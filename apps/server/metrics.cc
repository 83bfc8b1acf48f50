#include "apps/server/metrics.h"

#include <cstdio>

namespace ponder::apps::server {

std::string RenderMetrics(const std::string& model_name, const exec::EngineStats* stats) {
  std::string out;
  std::string escaped;  // the label value, escaped as the text format requires
  for (char c : model_name) {
    if (c == '\\' || c == '"') escaped.push_back('\\');
    if (c == '\n') {
      escaped += "\\n";
      continue;
    }
    escaped.push_back(c);
  }
  auto metric = [&](const char* name, const char* type, const char* help, double value) {
    char line[512];
    std::snprintf(line, sizeof(line), "# HELP %s %s\n# TYPE %s %s\n%s{model_name=\"%s\"} %.17g\n",
                  name, help, name, type, name, escaped.c_str(), value);
    out += line;
  };
  metric("ponder_engine_ready", "gauge", "1 once the model is loaded and requests are served.",
         stats ? 1 : 0);
  if (stats == nullptr) return out;
  const exec::EngineStats& s = *stats;
  metric("ponder_requests_running", "gauge", "Sequences in the batch.", double(s.active));
  metric("ponder_requests_waiting", "gauge", "Requests queued for admission.", double(s.waiting));
  metric("ponder_kv_cache_used_bytes", "gauge", "KV cache held by running sequences.",
         double(s.kv_bytes_used));
  metric("ponder_kv_cache_reserved_bytes", "gauge", "KV cache reserved by admitted sequences.",
         double(s.kv_bytes_reserved));
  metric("ponder_kv_cache_capacity_bytes", "gauge", "KV cache budget of the engine.",
         double(s.kv_bytes_capacity));
  metric("ponder_batch_rows", "gauge", "Sequences in the last scheduler tick.",
         double(s.last_batch_rows));
  metric("ponder_seconds_per_iteration", "gauge",
         "Running estimate of one core iteration's time (deadline planning).",
         s.seconds_per_iteration);
  metric("ponder_scheduler_ticks_total", "counter", "Scheduler ticks.", double(s.ticks));
  metric("ponder_requests_completed_total", "counter", "Requests finished (not cancelled).",
         double(s.completed));
  metric("ponder_requests_cancelled_total", "counter",
         "Requests cancelled (client gone, shutdown).", double(s.cancelled));
  metric("ponder_requests_rejected_total", "counter", "Requests refused with a full queue.",
         double(s.rejected));
  return out;
}

}  // namespace ponder::apps::server
