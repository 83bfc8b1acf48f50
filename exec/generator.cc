#include "exec/generator.h"

#include <algorithm>

#include "exec/depth_batcher.h"

namespace ponder::exec {

namespace {

// The tokens, finish reason, times and cache size of an adaptive run.
GenerateResult FromAdaptive(const AdaptiveResult& r) {
  GenerateResult result;
  for (const TokenTrace& t : r.tokens) result.tokens.push_back(t.token);
  result.finish_reason = r.finish_reason;
  result.prefill_seconds = r.prefill_seconds;
  result.decode_seconds = r.decode_seconds;
  result.kv_bytes = r.kv_bytes;
  return result;
}

// Fixed depth is the adaptive loop with no exit rule and min = max = steps.
policy::DepthPlan FixedPlan(int64_t steps) {
  policy::DepthPlan plan;
  plan.min_steps = plan.max_steps = plan.class_max_steps = static_cast<int>(steps);
  plan.rule = policy::ExitRule::kNone;
  return plan;
}

}  // namespace

AdaptiveOptions ToAdaptiveOptions(const GenerateOptions& options) {
  AdaptiveOptions ao;
  ao.max_tokens = options.max_tokens;
  ao.seed = options.seed;
  ao.init_scale = options.init_scale;
  ao.sampling = options.sampling;
  ao.stop_ids = options.stop_ids;
  ao.kv = options.kv;
  return ao;
}

Result<GenerateResult> Generate(Backend& model, std::span<const int32_t> prompt,
                                const GenerateOptions& options,
                                const std::function<void(int32_t)>& on_token) {
  if (options.steps < 1) return InvalidArgument("generate: steps must be >= 1");
  if (options.max_tokens < 1) return InvalidArgument("generate: max_tokens must be >= 1");
  PONDER_ASSIGN_OR_RETURN(AdaptiveResult r,
                          GenerateAdaptive(model, prompt, FixedPlan(options.steps),
                                           ToAdaptiveOptions(options), nullptr, on_token));
  return FromAdaptive(r);
}

Result<std::vector<GenerateResult>> GenerateBatch(Backend& model,
                                                  const std::vector<std::vector<int32_t>>& prompts,
                                                  const GenerateOptions& options) {
  if (options.steps < 1) return InvalidArgument("generate: steps must be >= 1");
  if (options.max_tokens < 1) return InvalidArgument("generate: max_tokens must be >= 1");
  const policy::DepthPlan plan = FixedPlan(options.steps);
  DepthBatcher batcher(model);
  std::vector<DepthBatcher::Id> ids;
  for (size_t b = 0; b < prompts.size(); ++b) {
    SequenceSpec spec;
    spec.prompt = prompts[b];
    spec.plan = plan;
    spec.options = ToAdaptiveOptions(options);
    spec.options.seed = options.seed + b;
    auto id = batcher.Add(std::move(spec));
    if (!id.ok()) {
      return Status(id.status().code(),
                    "prompt " + std::to_string(b) + ": " + id.status().message());
    }
    ids.push_back(*id);
  }
  while (batcher.active() > 0) PONDER_RETURN_IF_ERROR(batcher.Tick());
  std::vector<GenerateResult> results;
  for (DepthBatcher::Id id : ids) {
    PONDER_ASSIGN_OR_RETURN(AdaptiveResult r, batcher.TakeResult(id));
    results.push_back(FromAdaptive(r));
  }
  return results;
}

}  // namespace ponder::exec
