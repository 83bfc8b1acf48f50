#include "scenarios/replay.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "exec/adaptive.h"
#include "exec/generator.h"
#include "policy/planner.h"

namespace ponder::scenarios {

void Score::Add(bool ok, const std::vector<int32_t>& per_token_steps,
                const std::vector<std::string>& exit_reasons) {
  ++requests;
  correct += ok ? 1 : 0;
  tokens += static_cast<int64_t>(per_token_steps.size());
  for (int32_t s : per_token_steps) steps += s;
  token_steps.insert(token_steps.end(), per_token_steps.begin(), per_token_steps.end());
  for (const auto& r : exit_reasons) ++exits[r];
}

double Score::StepsQuantile(double q) const {
  if (token_steps.empty()) return 0.0;
  std::vector<int32_t> v = token_steps;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

namespace {

// One request with the profile's plan and per-token exits.
Result<exec::AdaptiveResult> RunPlanned(exec::cpu::CpuModel& model,
                                        const policy::DomainProfile& profile,
                                        const WorkloadItem& item, std::vector<int32_t> prompt,
                                        const ReplayOptions& options, uint64_t seed, int32_t eos) {
  policy::Request req;
  req.prompt = item.prompt;
  req.prompt_tokens = static_cast<int>(prompt.size());
  for (const auto& c : profile.task_classes) {
    if (c.name == item.task_class) req.task_class = item.task_class;
  }
  policy::PlanContext context;
  context.now = exec::MonotonicSeconds();  // the clock GenerateAdaptive checks deadlines on
  PONDER_ASSIGN_OR_RETURN(policy::DepthPlan plan, policy::Planner().Plan(req, profile, context));
  exec::AdaptiveOptions ao;
  ao.max_tokens = options.max_tokens;
  ao.seed = seed;
  ao.init_scale = options.init_scale;
  ao.stop_ids = {eos};
  ao.kv = options.kv;
  auto kv = exec::KvStrategy::Parse(plan.kv_strategy);
  if (kv.ok()) ao.kv = *kv;
  return exec::GenerateAdaptive(model, prompt, plan, ao);
}

}  // namespace

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
    // Per item: generated ids, iterations and exit reason per token.
    std::vector<std::vector<int32_t>> ids(end - start), steps(end - start);
    std::vector<std::vector<std::string>> reasons(end - start);
    if (options.profile != nullptr) {
      for (size_t i = start; i < end; ++i) {
        PONDER_ASSIGN_OR_RETURN(
            auto r, RunPlanned(model, *options.profile, items[i], prompts[i - start], options,
                               options.seed + i, eos));
        for (const auto& t : r.tokens) {
          ids[i - start].push_back(t.token);
          steps[i - start].push_back(static_cast<int32_t>(t.steps));
          reasons[i - start].emplace_back(policy::ExitReasonName(t.reason));
        }
      }
    } else {
      go.seed = options.seed + start;  // each item's state: (seed + its index)
      PONDER_ASSIGN_OR_RETURN(auto results, exec::GenerateBatch(model, prompts, go));
      for (size_t i = start; i < end; ++i) {
        ids[i - start] = results[i - start].tokens;
        steps[i - start].assign(ids[i - start].size(), static_cast<int32_t>(options.steps));
        reasons[i - start].assign(ids[i - start].size(), "max_steps");
      }
    }
    for (size_t i = start; i < end; ++i) {
      const size_t k = i - start;
      PONDER_ASSIGN_OR_RETURN(std::string answer, tokenizer.Decode(ids[k], true));
      const bool ok = answer == items[i].expected;
      const WorkloadItem& it = items[i];
      report.total.Add(ok, steps[k], reasons[k]);
      report.classes[it.task_class.empty() ? "none" : it.task_class].Add(ok, steps[k], reasons[k]);
      report.families[it.family].Add(ok, steps[k], reasons[k]);
      report.levels[it.family + "/" + std::to_string(it.difficulty)].Add(ok, steps[k], reasons[k]);
      report.items.push_back({it.id, answer, ok, static_cast<int64_t>(ids[k].size())});
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
                {"tokens", s.tokens},
                {"mean_steps_per_token", s.mean_steps_per_token()},
                {"p50_steps_per_token", s.StepsQuantile(0.5)},
                {"p95_steps_per_token", s.StepsQuantile(0.95)},
                {"exit_reasons", s.exits}};
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
