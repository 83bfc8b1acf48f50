#include "exec/adaptive.h"

#include <algorithm>
#include <chrono>

#include "policy/criteria.h"

namespace ponder::exec {
double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Result<AdaptiveResult> GenerateAdaptive(cpu::CpuModel& model, std::span<const int32_t> prompt,
                                        const policy::DepthPlan& plan,
                                        const AdaptiveOptions& options, double (*now)(),
                                        const std::function<void(int32_t)>& on_token) {
  const model::Config& cfg = model.config();
  if (prompt.empty()) return InvalidArgument("generate: the prompt has no tokens");
  if (plan.max_steps < 1 || plan.min_steps < 1 || plan.min_steps > plan.max_steps) {
    return InvalidArgument("generate: the plan's steps must satisfy 1 <= min <= max");
  }
  if (static_cast<int64_t>(prompt.size()) >= cfg.block_size) {
    return OutOfRange("generate: prompt of " + std::to_string(prompt.size()) +
                      " tokens leaves no room in the context of " + std::to_string(cfg.block_size));
  }
  if (now == nullptr) now = &MonotonicSeconds;
  const int64_t d = cfg.n_embd;
  const int64_t head_rows = cfg.padded_vocab_size;
  const auto vocab = static_cast<size_t>(cfg.vocab_size);
  auto cache = model.NewCache(options.kv);
  policy::ExitController controller(plan);
  policy::SignalTracker tracker;
  AdaptiveResult result;
  uint64_t rng = options.seed ^ 0x5851f42d4c957f2dull;
  std::vector<int32_t> input(prompt.begin(), prompt.end());
  std::vector<float> e, s, logits(head_rows), warm;
  for (int64_t produced = 0; produced < options.max_tokens; ++produced) {
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t n = static_cast<int64_t>(input.size());
    cpu::Chunk chunk{cache.get(), cache->tokens(), n};
    std::span<const cpu::Chunk> chunks(&chunk, 1);
    e.resize(n * d);
    s.resize(n * d);
    PONDER_RETURN_IF_ERROR(model.Prelude(chunks, input, e.data()));
    if (plan.warm_start && produced > 0) {
      std::copy(warm.begin(), warm.end(), s.begin());  // continuous chain of thought
    } else {
      model.InitState(chunks, options.seed, 0, options.init_scale, s.data());
    }
    float* last = s.data() + (n - 1) * d;
    controller.BeginToken();
    tracker.Begin(std::span<const float>(last, d));
    bool have_logits = false;
    policy::Decision decision;
    int64_t step = 0;
    while (true) {
      ++step;
      model.CoreStep(chunks, std::span<const int64_t>(&step, 1), e.data(), s.data());
      have_logits = false;
      const policy::CheckNeed need = controller.Need(static_cast<int>(step));
      policy::StepInput in;
      in.step = static_cast<int>(step);
      in.now = now();
      if (need.latent || need.gated) {
        const auto lat = tracker.ObserveLatent(std::span<const float>(last, d));
        in.signals.latent_diff = lat.latent_diff;
        in.signals.cosine = lat.cosine;
      }
      if (need.logits && (!need.gated || controller.GateOpen(*in.signals.latent_diff))) {
        model.Coda(chunks, s.data(), /*last_only=*/true, logits.data());
        have_logits = true;
        const double v =
            tracker.ObserveLogits(plan.rule, std::span<const float>(logits.data(), vocab));
        if (plan.rule == policy::ExitRule::kArgmaxStability) {
          in.signals.argmax = static_cast<int64_t>(v);
        } else {
          in.signals.logit_value = v;
        }
      }
      decision = controller.Decide(in);
      if (decision.action == policy::Action::kExit) break;
      if (step >= plan.max_steps) {  // the controller always exits here; never run past it
        decision.reason = policy::ExitReason::kMaxSteps;
        break;
      }
    }
    if (!have_logits) model.Coda(chunks, s.data(), /*last_only=*/true, logits.data());
    if (plan.warm_start) warm.assign(last, last + d);
    if (produced == 0) result.prompt_steps = step;
    const int32_t next =
        Sample(std::span<const float>(logits.data(), vocab), options.sampling, rng);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    (produced == 0 ? result.prefill_seconds : result.decode_seconds) += secs;
    result.tokens.push_back({next, step, decision.reason});
    if (on_token) on_token(next);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) !=
        options.stop_ids.end()) {
      result.finish_reason = "stop";
      break;
    }
    if (cache->tokens() + 1 >= cfg.block_size) break;
    input.assign(1, next);
  }
  if (result.finish_reason.empty()) result.finish_reason = "length";
  result.checks = controller.total_counts();
  result.kv_bytes = cache->bytes();
  return result;
}

}  // namespace ponder::exec
