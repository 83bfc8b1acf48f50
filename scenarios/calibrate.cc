#include "scenarios/calibrate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "exec/adaptive.h"
#include "model/task_protocol.h"
#include "policy/planner.h"

namespace ponder::scenarios {
namespace {

// Calibration runs on a clock that never moves: deadlines are off (see the header).
double FrozenClock() { return 0.0; }

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

// One workload item routed to a class.
struct Routed {
  size_t index = 0;  // in the workload (its seed offset)
  std::vector<int32_t> prompt;
  policy::DepthPlan plan;  // the class's plan, deadline removed
};

Result<exec::AdaptiveResult> Run(exec::Backend& model, const Routed& item,
                                 const policy::DepthPlan& plan, const CalibrateOptions& options,
                                 int32_t eos) {
  exec::AdaptiveOptions ao;
  ao.max_tokens = options.max_tokens;
  ao.seed = options.seed + item.index;
  ao.init_scale = options.init_scale;
  ao.stop_ids = {eos};
  PONDER_ASSIGN_OR_RETURN(ao.kv, exec::KvStrategy::Parse(plan.kv_strategy));
  return exec::GenerateAdaptive(model, item.prompt, plan, ao, &FrozenClock);
}

Status CheckGrid(const policy::TaskClass& task_class, const std::vector<double>& grid) {
  if (grid.empty()) return InvalidArgument("class " + task_class.name + ": empty candidate grid");
  for (double t : grid) {
    const bool count_rule = task_class.exit.rule == policy::ExitRule::kArgmaxStability;
    if (!(t > 0) || (count_rule && (t < 1 || t != std::floor(t)))) {
      return InvalidArgument("class " + task_class.name + ": candidate threshold " + Num(t) +
                             " is not valid for rule " +
                             std::string(policy::ExitRuleName(task_class.exit.rule)));
    }
  }
  return Status::Ok();
}

std::string ClassNames(const policy::DomainProfile& profile) {
  std::string out;
  for (const auto& c : profile.task_classes) out += (out.empty() ? "" : ", ") + c.name;
  return out;
}

}  // namespace

double ClassCalibration::threshold() const {
  return calibrated() ? evaluated[chosen].test.count.threshold : old_threshold;
}

int64_t AgreeingPrefix(const std::vector<int32_t>& reference,
                       const std::vector<int32_t>& candidate) {
  const size_t n = std::min(reference.size(), candidate.size());
  size_t k = 0;
  while (k < n && reference[k] == candidate[k]) ++k;
  return static_cast<int64_t>(k);
}

Result<CalibrationReport> Calibrate(exec::Backend& model, const model::Tokenizer& tokenizer,
                                    const policy::DomainProfile& profile,
                                    const std::vector<WorkloadItem>& items,
                                    const CalibrateOptions& options) {
  PONDER_RETURN_IF_ERROR(policy::ValidateTarget(options.target).WithContext("calibrate"));
  if (options.max_tokens < 1) return InvalidArgument("calibrate: max_tokens must be >= 1");
  PONDER_ASSIGN_OR_RETURN(model::TaskProtocol protocol, model::ProtocolOf(tokenizer, "calibrate"));
  const std::set<std::string> wanted(options.classes.begin(), options.classes.end());
  for (const std::string& name : wanted) {
    if (profile.FindClass(name) == nullptr) {
      return NotFound("calibrate: profile " + profile.name + " has no class \"" + name +
                      "\" (classes: " + ClassNames(profile) + ")");
    }
  }
  for (const auto& [name, grid] : options.grids) {
    const policy::TaskClass* c = profile.FindClass(name);
    if (c == nullptr) return NotFound("calibrate: grid for unknown class \"" + name + "\"");
    PONDER_RETURN_IF_ERROR(CheckGrid(*c, grid).WithContext("calibrate"));
  }

  // Route every item as replay does.
  std::map<std::string, std::vector<Routed>> routed;
  const policy::Planner planner;
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkloadItem& item = items[i];
    const std::string where = "calibrate: line " + std::to_string(item.line);
    Routed r;
    r.index = i;
    auto prompt = model::EncodeTaskPrompt(tokenizer, protocol, item.prompt);
    if (!prompt.ok()) return prompt.status().WithContext(where);
    r.prompt = std::move(*prompt);
    policy::Request req;
    req.prompt = item.prompt;
    req.prompt_tokens = static_cast<int>(r.prompt.size());
    if (profile.FindClass(item.task_class) != nullptr) req.task_class = item.task_class;
    auto plan = planner.Plan(req, profile, policy::PlanContext{});
    if (!plan.ok()) return plan.status().WithContext(where);
    r.plan = std::move(*plan);
    r.plan.deadline_seconds = 0.0;
    auto& group = routed[r.plan.task_class];
    if (options.max_items <= 0 || static_cast<int64_t>(group.size()) < options.max_items) {
      group.push_back(std::move(r));
    }
  }

  CalibrationReport report;
  report.target = options.target;
  std::vector<const policy::TaskClass*> todo;
  for (const policy::TaskClass& c : profile.task_classes) {
    const bool named = wanted.count(c.name) > 0;
    if (!wanted.empty() && !named) continue;
    std::string why;
    if (c.exit.rule == policy::ExitRule::kNone) {
      why = "exit rule none (nothing to calibrate)";
    } else if (routed[c.name].empty()) {
      why = "no items of this class in the workload";
    }
    if (why.empty()) {
      todo.push_back(&c);
    } else if (named) {
      return InvalidArgument("calibrate: class " + c.name + ": " + why);
    } else {
      report.skipped.push_back(c.name + ": " + why);
    }
  }

  const policy::CalibrationTarget& target = options.target;
  for (size_t ci = 0; ci < todo.size(); ++ci) {
    const policy::TaskClass& cls = *todo[ci];
    const std::vector<Routed>& group = routed[cls.name];
    ClassCalibration cal;
    cal.task_class = cls.name;
    cal.rule = cls.exit.rule;
    cal.old_threshold = cls.exit.threshold;
    cal.max_steps = cls.max_steps;
    cal.items = static_cast<int64_t>(group.size());
    auto grid_it = options.grids.find(cls.name);
    cal.grid = grid_it != options.grids.end()
                   ? grid_it->second
                   : policy::CandidateThresholds(cls.exit.rule, policy::ChecksPerToken(cls));
    CalibrationProgress progress;
    progress.task_class = cls.name;
    progress.class_index = static_cast<int>(ci);
    progress.classes = static_cast<int>(todo.size());
    progress.candidates = static_cast<int>(cal.grid.size());
    progress.items = cal.items;

    // 1. The reference: max depth, no early exit.
    std::vector<std::vector<int32_t>> reference(group.size());
    int64_t ref_steps = 0, ref_tokens = 0;
    for (size_t k = 0; k < group.size(); ++k) {
      policy::DepthPlan plan = group[k].plan;
      plan.rule = policy::ExitRule::kNone;
      plan.threshold = 0.0;
      plan.gate_latent_below.reset();
      plan.max_steps = plan.class_max_steps = cls.max_steps;
      plan.cap_reason = policy::ExitReason::kMaxSteps;
      PONDER_ASSIGN_OR_RETURN(auto r, Run(model, group[k], plan, options, protocol.eos));
      for (const auto& t : r.tokens) {
        reference[k].push_back(t.token);
        ref_steps += t.steps;
      }
      ref_tokens += static_cast<int64_t>(r.tokens.size());
      progress.item = static_cast<int64_t>(k) + 1;
      if (options.progress) options.progress(progress);
    }
    cal.tokens = ref_tokens;
    cal.reference_steps_per_token = ref_tokens ? double(ref_steps) / ref_tokens : 0.0;

    // 2. Candidates, tightest first, until one is not certified.
    if (policy::MaxRejectableDisagreements(cal.tokens, target.epsilon(), target.delta) < 0) {
      cal.note = "too few tokens (" + std::to_string(cal.tokens) + "; " +
                 std::to_string(policy::MinTokensForGuarantee(target.epsilon(), target.delta)) +
                 " all agreeing are needed for " + Num(target.target_agreement) + " at delta " +
                 Num(target.delta) + ")";
    } else {
      for (size_t g = 0; g < cal.grid.size(); ++g) {
        progress.candidate = static_cast<int>(g);
        progress.threshold = cal.grid[g];
        CandidateResult cand;
        cand.test.count.threshold = cal.grid[g];
        for (size_t k = 0; k < group.size(); ++k) {
          policy::DepthPlan plan = group[k].plan;
          plan.threshold = cal.grid[g];
          PONDER_ASSIGN_OR_RETURN(auto r, Run(model, group[k], plan, options, protocol.eos));
          std::vector<int32_t> tokens;
          for (const auto& t : r.tokens) {
            tokens.push_back(t.token);
            cand.steps += t.steps;
          }
          cand.generated_tokens += static_cast<int64_t>(tokens.size());
          cand.test.count.agree += AgreeingPrefix(reference[k], tokens);
          cand.test.count.total += static_cast<int64_t>(reference[k].size());
          progress.item = static_cast<int64_t>(k) + 1;
          if (options.progress) options.progress(progress);
        }
        cand.test = policy::TestCandidate(cand.test.count, target);
        cal.evaluated.push_back(cand);
        if (!cand.test.rejected) break;
      }
      std::vector<policy::CandidateCount> counts;
      for (const auto& c : cal.evaluated) counts.push_back(c.test.count);
      PONDER_ASSIGN_OR_RETURN(auto fixed, policy::FixedSequenceTest(counts, target));
      cal.chosen = fixed.chosen;
      if (!cal.calibrated()) {
        cal.note = "the tightest candidate " + Num(cal.grid.front()) +
                   " is not certified (agreement " + Num(cal.evaluated.front().agreement()) +
                   ", p = " + Num(cal.evaluated.front().test.p_value) + " > delta)";
      }
    }
    report.classes.push_back(std::move(cal));
  }
  return report;
}

}  // namespace ponder::scenarios
