#include "scenarios/replay.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "exec/generator.h"

namespace ponder::scenarios {

void Score::Add(bool ok, int64_t generated, int64_t iterations) {
  ++requests;
  correct += ok ? 1 : 0;
  tokens += generated;
  steps += iterations;
}

Result<ReplayReport> Replay(exec::cpu::CpuModel& model, const model::Tokenizer& tokenizer,
                            const std::vector<WorkloadItem>& items, const ReplayOptions& options) {
  const int32_t bos = tokenizer.TokenToId("<|begin_text|>");
  const int32_t eos = tokenizer.TokenToId("<|end_text|>");
  if (eos < 0) return InvalidArgument("replay: the tokenizer has no <|end_text|> token");
  exec::GenerateOptions go;
  go.steps = options.steps;
  go.max_tokens = options.max_tokens;
  go.seed = options.seed;
  go.init_scale = options.init_scale;
  go.kv = options.kv;
  go.stop_ids = {eos};
  ReplayReport report;
  const size_t batch = static_cast<size_t>(std::max<int64_t>(1, options.batch));
  for (size_t start = 0; start < items.size(); start += batch) {
    const size_t end = std::min(items.size(), start + batch);
    std::vector<std::vector<int32_t>> prompts;
    for (size_t i = start; i < end; ++i) {
      auto ids = tokenizer.Encode(items[i].prompt, false);
      if (!ids.ok()) {
        return ids.status().WithContext("replay: line " + std::to_string(items[i].line));
      }
      if (bos >= 0) ids->insert(ids->begin(), bos);
      prompts.push_back(std::move(*ids));
    }
    go.seed = options.seed + start;  // each item's state: (seed + its index)
    PONDER_ASSIGN_OR_RETURN(auto results, exec::GenerateBatch(model, prompts, go));
    for (size_t i = start; i < end; ++i) {
      const auto& r = results[i - start];
      PONDER_ASSIGN_OR_RETURN(std::string answer, tokenizer.Decode(r.tokens, true));
      const bool ok = answer == items[i].expected;
      const int64_t n = static_cast<int64_t>(r.tokens.size());
      const int64_t iterations = n * options.steps;
      const WorkloadItem& it = items[i];
      report.total.Add(ok, n, iterations);
      report.classes[it.task_class.empty() ? "none" : it.task_class].Add(ok, n, iterations);
      report.families[it.family].Add(ok, n, iterations);
      report.levels[it.family + "/" + std::to_string(it.difficulty)].Add(ok, n, iterations);
      report.items.push_back({it.id, answer, ok, n});
    }
  }
  return report;
}

std::string ReportJson(const ReplayReport& report, int64_t steps, bool with_items) {
  using nlohmann::json;
  auto score = [](const Score& s) {
    return json{{"accuracy", s.accuracy()},
                {"requests", s.requests},
                {"correct", s.correct},
                {"mean_steps_per_token", s.mean_steps_per_token()}};
  };
  json out = score(report.total);
  out["steps"] = steps;
  for (const auto* group : {&report.classes, &report.families, &report.levels}) {
    json g = json::object();
    for (const auto& [name, s] : *group) g[name] = score(s);
    out[group == &report.classes    ? "classes"
        : group == &report.families ? "families"
                                    : "levels"] = g;
  }
  if (with_items) {
    json arr = json::array();
    for (const auto& it : report.items) {
      arr.push_back({{"id", it.id}, {"answer", it.answer}, {"correct", it.correct}});
    }
    out["items"] = arr;
  }
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace ponder::scenarios
