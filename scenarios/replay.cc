#include "scenarios/replay.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>

#include "exec/adaptive.h"
#include "exec/cost.h"
#include "exec/generator.h"
#include "model/task_protocol.h"
#include "policy/planner.h"

namespace ponder::scenarios {
namespace {

// Nearest-rank quantile q in [0, 1]; 0 when empty.
template <typename T>
double Quantile(std::vector<T> v, double q) {
  if (v.empty()) return 0.0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return static_cast<double>(v[k]);
}

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void Score::Add(bool ok, const std::vector<int32_t>& per_token_steps,
                const std::vector<std::string>& exit_reasons) {
  ++requests;
  correct += ok ? 1 : 0;
  tokens += static_cast<int64_t>(per_token_steps.size());
  for (int32_t s : per_token_steps) steps += s;
  token_steps.insert(token_steps.end(), per_token_steps.begin(), per_token_steps.end());
  for (const auto& r : exit_reasons) ++exits[r];
}

double Score::StepsQuantile(double q) const { return Quantile(token_steps, q); }

void Score::AddUsage(const RequestUsage& u) {
  prompt_tokens += u.prompt_tokens;
  seconds += u.seconds;
  device_seconds += u.device_seconds;
  prefill_flops += u.cost.prefill.flops;
  decode_flops += u.cost.decode.flops;
  check_flops += u.cost.checks.flops;
  flops += u.cost.total().flops;
  logit_checks += u.logit_checks;
  latent_checks += u.latent_checks;
  request_seconds.push_back(u.seconds);
  request_seconds_per_token.push_back(u.tokens > 0 ? u.seconds / u.tokens : 0.0);
}

double Score::mean_seconds_per_request() const {
  return request_seconds.empty() ? 0.0 : seconds / static_cast<double>(request_seconds.size());
}

double Score::SecondsQuantile(double q) const { return Quantile(request_seconds, q); }

double Score::SecondsPerTokenQuantile(double q) const {
  return Quantile(request_seconds_per_token, q);
}

double Score::Cost(const policy::Pricing& pricing) const {
  return pricing.per_device_second * device_seconds + pricing.per_tflop * flops / 1e12;
}

namespace {

// One request with the profile's plan and per-token exits; `plan` receives the plan.
Result<exec::AdaptiveResult> RunPlanned(exec::Backend& model, const policy::DomainProfile& profile,
                                        const WorkloadItem& item, std::vector<int32_t> prompt,
                                        const ReplayOptions& options, uint64_t seed, int32_t eos,
                                        policy::DepthPlan& plan) {
  policy::Request req;
  req.prompt = item.prompt;
  req.prompt_tokens = static_cast<int>(prompt.size());
  for (const auto& c : profile.task_classes) {
    if (c.name == item.task_class) req.task_class = item.task_class;
  }
  policy::PlanContext context;
  context.now = exec::MonotonicSeconds();  // the clock GenerateAdaptive checks deadlines on
  PONDER_ASSIGN_OR_RETURN(plan, policy::Planner().Plan(req, profile, context));
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

Result<ReplayReport> Replay(exec::Backend& model, const model::Tokenizer& tokenizer,
                            const std::vector<WorkloadItem>& items, const ReplayOptions& options) {
  PONDER_ASSIGN_OR_RETURN(const model::TaskProtocol protocol,
                          model::ProtocolOf(tokenizer, "replay"));
  const int32_t eos = protocol.eos;
  exec::GenerateOptions go;
  go.steps = options.steps;
  go.max_tokens = options.max_tokens;
  go.seed = options.seed;
  go.init_scale = options.init_scale;
  go.kv = options.kv;
  go.stop_ids = {eos};
  PONDER_ASSIGN_OR_RETURN(
      const telemetry::CostModel cost_model,
      telemetry::CostModel::Create(options.dims ? *options.dims : exec::DimsOf(model.config())));
  ReplayReport report;
  if (options.profile != nullptr) {
    report.pricing = options.profile->pricing;
    report.currency = options.profile->currency;
  }
  const size_t batch = static_cast<size_t>(std::max<int64_t>(1, options.batch));
  for (size_t start = 0; start < items.size(); start += batch) {
    const size_t end = std::min(items.size(), start + batch);
    std::vector<std::vector<int32_t>> prompts;
    for (size_t i = start; i < end; ++i) {
      auto ids = model::EncodeTaskPrompt(tokenizer, protocol, items[i].prompt);
      if (!ids.ok()) {
        return ids.status().WithContext("replay: line " + std::to_string(items[i].line));
      }
      prompts.push_back(std::move(*ids));
    }
    // Per item: generated ids, iterations and exit reason per token.
    std::vector<std::vector<int32_t>> ids(end - start), steps(end - start);
    std::vector<std::vector<std::string>> reasons(end - start);
    std::vector<RequestUsage> usage(end - start);
    if (options.profile != nullptr) {
      for (size_t i = start; i < end; ++i) {
        const size_t k = i - start;
        policy::DepthPlan plan;
        const auto t0 = std::chrono::steady_clock::now();
        PONDER_ASSIGN_OR_RETURN(auto r, RunPlanned(model, *options.profile, items[i], prompts[k],
                                                   options, options.seed + i, eos, plan));
        usage[k].seconds = usage[k].device_seconds = SecondsSince(t0);
        for (const auto& t : r.tokens) {
          ids[k].push_back(t.token);
          steps[k].push_back(static_cast<int32_t>(t.steps));
          reasons[k].emplace_back(policy::ExitReasonName(t.reason));
        }
        const auto passes = exec::PassesOf(r, static_cast<int64_t>(prompts[k].size()));
        usage[k].cost = cost_model.Request(passes);
        for (const auto& p : passes) {
          usage[k].logit_checks += p.logit_checks;
          usage[k].latent_checks += p.latent_checks;
        }
      }
    } else {
      go.seed = options.seed + start;  // each item's state: (seed + its index)
      const auto t0 = std::chrono::steady_clock::now();
      PONDER_ASSIGN_OR_RETURN(auto results, exec::GenerateBatch(model, prompts, go));
      const double wall = SecondsSince(t0);
      double batch_flops = 0.0;
      for (size_t i = start; i < end; ++i) {
        const size_t k = i - start;
        ids[k] = results[k].tokens;
        steps[k].assign(ids[k].size(), static_cast<int32_t>(options.steps));
        reasons[k].assign(ids[k].size(), "max_steps");
        // Pass t > 0 reads token t - 1 at position prompt + t - 1; all at options.steps.
        const std::vector<int64_t> decode(ids[k].empty() ? 0 : ids[k].size() - 1, options.steps);
        usage[k].cost = cost_model.Request(telemetry::CostModel::FixedPasses(
            static_cast<int64_t>(prompts[k].size()), options.steps, decode));
        usage[k].seconds = wall;
        batch_flops += usage[k].cost.total().flops;
      }
      for (auto& u : usage) {
        u.device_seconds = batch_flops > 0 ? wall * u.cost.total().flops / batch_flops : 0.0;
      }
    }
    for (size_t i = start; i < end; ++i) {
      const size_t k = i - start;
      PONDER_ASSIGN_OR_RETURN(std::string answer, tokenizer.Decode(ids[k], true));
      const bool ok = answer == items[i].expected;
      const WorkloadItem& it = items[i];
      usage[k].prompt_tokens = static_cast<int64_t>(prompts[k].size());
      usage[k].tokens = static_cast<int64_t>(ids[k].size());
      for (Score* s :
           {&report.total, &report.classes[it.task_class.empty() ? "none" : it.task_class],
            &report.families[it.family],
            &report.levels[it.family + "/" + std::to_string(it.difficulty)]}) {
        s->Add(ok, steps[k], reasons[k]);
        s->AddUsage(usage[k]);
      }
      report.items.push_back({it.id, answer, ok, static_cast<int64_t>(ids[k].size())});
    }
  }
  return report;
}

std::string ReportJson(const ReplayReport& report, int64_t steps, bool with_items) {
  using nlohmann::json;
  auto score = [&report](const Score& s) {
    json j{{"accuracy", s.accuracy()},
           {"requests", s.requests},
           {"correct", s.correct},
           {"tokens", s.tokens},
           {"prompt_tokens", s.prompt_tokens},
           {"mean_steps_per_token", s.mean_steps_per_token()},
           {"p50_steps_per_token", s.StepsQuantile(0.5)},
           {"p95_steps_per_token", s.StepsQuantile(0.95)},
           {"exit_reasons", s.exits},
           {"seconds", s.seconds},
           {"mean_seconds_per_request", s.mean_seconds_per_request()},
           {"p95_seconds_per_request", s.SecondsQuantile(0.95)},
           {"mean_seconds_per_token", s.mean_seconds_per_token()},
           {"p95_seconds_per_token", s.SecondsPerTokenQuantile(0.95)},
           {"device_seconds", s.device_seconds},
           {"flops", s.flops},
           {"flops_per_token", s.flops_per_token()},
           {"prefill_flops", s.prefill_flops},
           {"decode_flops", s.decode_flops},
           {"check_flops", s.check_flops},
           {"logit_checks", s.logit_checks},
           {"latent_checks", s.latent_checks}};
    if (report.pricing) {
      const double cost = s.Cost(*report.pricing);
      j["cost"] = cost;
      j["cost_per_request"] = s.requests ? cost / s.requests : 0.0;
      j["cost_per_token"] = s.tokens ? cost / s.tokens : 0.0;
    }
    return j;
  };
  json out = score(report.total);
  out["steps"] = steps;
  if (report.pricing) {
    out["currency"] = report.currency;
    out["pricing"] = {{"per_device_second", report.pricing->per_device_second},
                      {"per_tflop", report.pricing->per_tflop}};
  }
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

namespace {

// printf into a std::string.
template <typename... Args>
std::string Format(const char* fmt, Args... args) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), fmt, args...);
  return buf;
}

// "123.4 M": a count with an SI prefix, 4 significant digits at most.
std::string Si(double v) {
  if (v == 0.0) return "0 ";
  const char* prefixes[] = {"", "k", "M", "G", "T", "P", "E"};
  int p = 0;
  while (std::abs(v) >= 1000.0 && p < 6) {
    v /= 1000.0;
    ++p;
  }
  return Format(v >= 100 ? "%.0f %s" : v >= 10 ? "%.1f %s" : "%.2f %s", v, prefixes[p]);
}

// Short column labels of the exit reasons.
const char* ReasonLabel(const std::string& reason) {
  if (reason == "converged") return "conv";
  if (reason == "max_steps") return "max";
  if (reason == "deadline") return "dline";
  return reason.c_str();
}

}  // namespace

std::string ReportText(const ReplayReport& report, const std::string& title) {
  std::string out = title + "\n";
  out += Format("accuracy %.3f over %lld requests, %.2f iterations per token\n",
                report.total.accuracy(), (long long)report.total.requests,
                report.total.mean_steps_per_token());
  // Rows: every class, then "all".
  std::vector<std::pair<std::string, const Score*>> rows;
  for (const auto& [name, s] : report.classes) rows.emplace_back(name, &s);
  rows.emplace_back("all", &report.total);
  int w = 5;
  for (const auto& [name, s] : rows) w = std::max<int>(w, static_cast<int>(name.size()));
  w = std::min(w, 24);
  std::set<std::string> reason_set;
  for (const auto& [name, s] : rows) {
    for (const auto& [r, n] : s->exits) reason_set.insert(r);
  }
  // The usual reasons first, in the order of policy::ExitReason.
  std::vector<std::string> reasons;
  for (const char* r : {"converged", "max_steps", "budget", "deadline", "load"}) {
    if (reason_set.erase(r)) reasons.emplace_back(r);
  }
  reasons.insert(reasons.end(), reason_set.begin(), reason_set.end());

  // Table 1: accuracy, depth, exits (tokens by exit reason).
  out += Format("\n%-*s %5s %6s %7s %9s %4s %4s", w, "class", "reqs", "acc", "tokens", "steps/tok",
                "p50", "p95");
  for (const auto& r : reasons) out += Format(" %6s", ReasonLabel(r));
  out += "\n";
  for (const auto& [name, s] : rows) {
    out += Format("%-*s %5lld %6.3f %7lld %9.2f %4.0f %4.0f", w, name.c_str(),
                  (long long)s->requests, s->accuracy(), (long long)s->tokens,
                  s->mean_steps_per_token(), s->StepsQuantile(0.5), s->StepsQuantile(0.95));
    for (const auto& r : reasons) {
      auto it = s->exits.find(r);
      out += Format(" %6lld", (long long)(it == s->exits.end() ? 0 : it->second));
    }
    out += "\n";
  }
  out += "(steps/tok: mean core iterations per generated token; then tokens by exit reason)\n";

  // Table 2: latency, compute, cost.
  const bool priced = report.pricing.has_value();
  const std::string cur = report.currency.empty() ? "cost" : report.currency;
  // Fixed decimals per cost column, enough for 3 significant digits of its smallest value.
  int cost_decimals[2] = {2, 2};
  if (priced) {
    for (int col = 0; col < 2; ++col) {
      double smallest = 0.0;
      for (const auto& [name, s] : rows) {
        const double cost = s->Cost(*report.pricing);
        const double v = col == 0 ? (s->requests ? cost / s->requests : 0.0) : cost;
        if (v > 0 && (smallest == 0.0 || v < smallest)) smallest = v;
      }
      if (smallest > 0) {
        cost_decimals[col] =
            std::clamp(2 - static_cast<int>(std::floor(std::log10(smallest))), 2, 8);
      }
    }
  }
  out += Format("\n%-*s %8s %8s %8s %8s %9s %7s", w, "class", "s/req", "p95 s", "ms/tok", "p95 ms",
                "FLOP/tok", "checks");
  if (priced) out += Format(" %10s %10s", (cur + "/req").c_str(), cur.c_str());
  out += "\n";
  for (const auto& [name, s] : rows) {
    out += Format("%-*s %8.3f %8.3f %8.2f %8.2f %9s %6.1f%%", w, name.c_str(),
                  s->mean_seconds_per_request(), s->SecondsQuantile(0.95),
                  s->mean_seconds_per_token() * 1e3, s->SecondsPerTokenQuantile(0.95) * 1e3,
                  Si(s->flops_per_token()).c_str(),
                  s->flops > 0 ? 100.0 * s->check_flops / s->flops : 0.0);
    if (priced) {
      const double cost = s->Cost(*report.pricing);
      const double per_request = s->requests ? cost / s->requests : 0.0;
      out += Format(" %10.*f %10.*f", cost_decimals[0], per_request, cost_decimals[1], cost);
    }
    out += "\n";
  }
  out +=
      "(latency per request and per generated token; FLOPs per generated token, prefill\n"
      " included; checks: share of the FLOPs spent on exit checks)\n";
  const Score& t = report.total;
  out += Format("\ncompute  %sFLOP: prefill %sFLOP, decode %sFLOP, exit checks %sFLOP\n",
                Si(t.flops).c_str(), Si(t.prefill_flops).c_str(), Si(t.decode_flops).c_str(),
                Si(t.check_flops).c_str());
  out += Format("         %lld logit checks, %lld latent checks; %.2f device-seconds\n",
                (long long)t.logit_checks, (long long)t.latent_checks, t.device_seconds);
  if (priced) {
    out +=
        Format("cost     %.4g %s = %g %s/device-second x %.2f s + %g %s/TFLOP x %.4g TFLOP\n",
               t.Cost(*report.pricing), cur.c_str(), report.pricing->per_device_second, cur.c_str(),
               t.device_seconds, report.pricing->per_tflop, cur.c_str(), t.flops / 1e12);
  }
  out += "\n";
  for (const auto& [name, s] : report.families) {
    out +=
        Format("  family %-28s %.3f  (%lld)\n", name.c_str(), s.accuracy(), (long long)s.requests);
  }
  return out;
}

}  // namespace ponder::scenarios
