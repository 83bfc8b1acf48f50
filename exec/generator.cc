#include "exec/generator.h"

#include <algorithm>

namespace ponder::exec {

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

Result<GenerateResult> Generate(cpu::CpuModel& model, std::span<const int32_t> prompt,
                                const GenerateOptions& options,
                                const std::function<void(int32_t)>& on_token) {
  if (options.steps < 1) return InvalidArgument("generate: steps must be >= 1");
  if (options.max_tokens < 1) return InvalidArgument("generate: max_tokens must be >= 1");
  // Fixed depth is the adaptive loop with no exit rule and min = max = steps.
  policy::DepthPlan plan;
  plan.min_steps = plan.max_steps = plan.class_max_steps = static_cast<int>(options.steps);
  plan.rule = policy::ExitRule::kNone;
  PONDER_ASSIGN_OR_RETURN(
      AdaptiveResult r,
      GenerateAdaptive(model, prompt, plan, ToAdaptiveOptions(options), nullptr, on_token));
  GenerateResult result;
  for (const TokenTrace& t : r.tokens) result.tokens.push_back(t.token);
  result.finish_reason = r.finish_reason;
  result.prefill_seconds = r.prefill_seconds;
  result.decode_seconds = r.decode_seconds;
  result.kv_bytes = r.kv_bytes;
  return result;
}

Result<std::vector<GenerateResult>> GenerateBatch(cpu::CpuModel& model,
                                                  const std::vector<std::vector<int32_t>>& prompts,
                                                  const GenerateOptions& options) {
  const model::Config& cfg = model.config();
  if (options.steps < 1) return InvalidArgument("generate: steps must be >= 1");
  if (options.max_tokens < 1) return InvalidArgument("generate: max_tokens must be >= 1");
  const size_t batch = prompts.size();
  for (size_t b = 0; b < batch; ++b) {
    if (prompts[b].empty()) {
      return InvalidArgument("generate: prompt " + std::to_string(b) + " has no tokens");
    }
    if (static_cast<int64_t>(prompts[b].size()) >= cfg.block_size) {
      return OutOfRange(
          "generate: prompt " + std::to_string(b) + " of " + std::to_string(prompts[b].size()) +
          " tokens leaves no room in the context of " + std::to_string(cfg.block_size));
    }
  }
  std::vector<std::unique_ptr<SequenceCache>> caches;
  std::vector<uint64_t> rng(batch);
  std::vector<GenerateResult> results(batch);
  std::vector<std::vector<int32_t>> input(prompts);
  std::vector<bool> done(batch, false);
  for (size_t b = 0; b < batch; ++b) {
    caches.push_back(model.NewCache(options.kv));
    rng[b] = (options.seed + b) ^ 0x5851f42d4c957f2dull;  // as Generate with seed + b
  }
  const int64_t d = cfg.n_embd;
  const int64_t rows_v = cfg.padded_vocab_size;
  std::vector<float> e, s, logits;
  std::vector<cpu::Chunk> chunks;
  std::vector<int32_t> tokens;
  std::vector<size_t> who;
  std::vector<int64_t> its;
  for (int64_t round = 0; round < options.max_tokens; ++round) {
    chunks.clear();
    tokens.clear();
    who.clear();
    for (size_t b = 0; b < batch; ++b) {
      if (done[b]) continue;
      chunks.push_back(
          {caches[b].get(), caches[b]->tokens(), static_cast<int64_t>(input[b].size())});
      tokens.insert(tokens.end(), input[b].begin(), input[b].end());
      who.push_back(b);
    }
    if (chunks.empty()) break;
    const int64_t n = static_cast<int64_t>(tokens.size());
    e.resize(n * d);
    s.resize(n * d);
    PONDER_RETURN_IF_ERROR(model.Prelude(chunks, tokens, e.data()));
    // Sequence b draws as Generate with seed + b does: batching changes nothing.
    int64_t row = 0;
    for (size_t i = 0; i < chunks.size(); ++i) {
      model.InitState(std::span<const cpu::Chunk>(&chunks[i], 1), options.seed + who[i], 0,
                      options.init_scale, s.data() + row * d);
      row += chunks[i].count;
    }
    for (int64_t it = 1; it <= options.steps; ++it) {
      its.assign(chunks.size(), it);
      model.CoreStep(chunks, its, e.data(), s.data());
    }
    logits.resize(chunks.size() * rows_v);
    model.Coda(chunks, s.data(), /*last_only=*/true, logits.data());
    for (size_t i = 0; i < chunks.size(); ++i) {
      const size_t b = who[i];
      const int32_t next = Sample(std::span<const float>(&logits[i * rows_v], cfg.vocab_size),
                                  options.sampling, rng[b]);
      results[b].tokens.push_back(next);
      input[b].assign(1, next);
      if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) !=
          options.stop_ids.end()) {
        results[b].finish_reason = "stop";
        done[b] = true;
      } else if (caches[b]->tokens() + 1 >= cfg.block_size) {
        done[b] = true;
      }
    }
  }
  for (size_t b = 0; b < batch; ++b) {
    if (results[b].finish_reason.empty()) results[b].finish_reason = "length";
    results[b].kv_bytes = caches[b]->bytes();
  }
  return results;
}

}  // namespace ponder::exec
